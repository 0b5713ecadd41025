/*
 * A bounded HTTP/1.1 load generator for bench/httpd.c: `loadgen <port> <connections>
 * <seconds>` opens that many keep-alive connections to 127.0.0.1:<port> (loopback only, by
 * construction), keeps one request in flight on each, stops after <seconds> (at most 60) or
 * 10 million requests, and prints "requests <n> seconds <s> rps <r> errors <e>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_REQUESTS 10000000ul

struct client {
  int fd;
  char buf[16384];
  size_t len;
  unsigned long sent;
};

static const char *paths[] = {"/", "/hash?key=xcover", "/stats", "/index.html", "/missing"};

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int send_request(struct client *c) {
  char req[256];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: xcover-loadgen\r\n"
                   "Accept: */*\r\n\r\n",
                   paths[c->sent++ % (sizeof paths / sizeof paths[0])]);
  return write(c->fd, req, (size_t)n) == n ? 0 : -1;
}

/* Length of the complete response at the start of the buffer, or 0. */
static size_t response_len(const struct client *c) {
  const char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
  if (!end) return 0;
  const char *cl = memmem(c->buf, (size_t)(end - c->buf), "Content-Length: ", 16);
  size_t body = cl ? strtoul(cl + 16, NULL, 10) : 0;
  size_t total = (size_t)(end - c->buf) + 4 + body;
  return c->len >= total ? total : 0;
}

static int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((unsigned short)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: loadgen <port> <connections> <seconds>\n");
    return 2;
  }
  int port = atoi(argv[1]), nconn = atoi(argv[2]);
  double secs = atof(argv[3]);
  if (nconn < 1 || nconn > 64 || secs <= 0 || secs > 60) {
    fprintf(stderr, "loadgen: 1..64 connections, 0..60 seconds\n");
    return 2;
  }
  int ep = epoll_create1(0);
  struct client *cs = calloc((size_t)nconn, sizeof *cs);
  for (int i = 0; i < nconn; i++) {
    cs[i].fd = connect_to(port);
    if (cs[i].fd < 0) {
      perror("connect");
      return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
    epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
  }
  unsigned long done = 0, errors = 0;
  double t0 = now_s(), deadline = t0 + secs;
  for (int i = 0; i < nconn; i++) send_request(&cs[i]);
  struct epoll_event evs[64];
  double t = t0;
  while (t < deadline && done < MAX_REQUESTS) {
    int n = epoll_wait(ep, evs, 64, 100);
    for (int i = 0; i < n; i++) {
      struct client *c = evs[i].data.ptr;
      ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
      if (r <= 0) {
        if (r < 0 && errno == EAGAIN) continue;
        fprintf(stderr, "loadgen: connection closed\n");
        return 1;
      }
      c->len += (size_t)r;
      size_t l;
      while ((l = response_len(c)) > 0) {
        if (memcmp(c->buf, "HTTP/1.1 ", 9)) errors++;
        memmove(c->buf, c->buf + l, c->len - l);
        c->len -= l;
        done++;
        if (send_request(c)) errors++;
      }
    }
    t = now_s();
  }
  double el = t - t0;
  printf("requests %lu seconds %.3f rps %.1f errors %lu\n", done, el, done / el, errors);
  return 0;
}
