/*
 * A small HTTP/1.1 server for the "real workload" benchmark: single-threaded, epoll,
 * keep-alive, 127.0.0.1 only. It does the work a tiny web server does per request (read,
 * parse the request line and the headers, route, run a handler, format headers, write) in
 * a few dozen small functions, so hooking "every function of the main executable" puts a
 * probe on a realistic call mix (about 40 hooked calls per request). Built with -fno-inline
 * so those calls stay calls.
 *
 *   httpd            binds 127.0.0.1 on a free port, prints "port <n>", serves until
 *                    killed (SIGTERM/SIGINT) or stdin closes
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONN 256
#define BUF 8192

struct conn {
  int fd;
  size_t in_len;
  char in[BUF];
  char out[BUF];
  size_t out_len, out_off;
};

struct request {
  char method[8];
  char path[256];
  char query[256];
  int keep_alive;
  int header_count;
  size_t content_length;
  char user_agent[128];
};

struct response {
  int status;
  const char *content_type;
  char body[2048];
  size_t body_len;
};

static struct conn *conns[MAX_CONN];
static unsigned long request_total;
static volatile sig_atomic_t stopping;

static void srv_on_signal(int sig) { (void)sig; stopping = 1; }

static int srv_set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL, 0);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static struct conn *srv_conn_new(int fd) {
  if (fd >= MAX_CONN) return NULL;
  struct conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->fd = fd;
  conns[fd] = c;
  return c;
}

static void srv_conn_free(int ep, struct conn *c) {
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  conns[c->fd] = NULL;
  free(c);
}

static int srv_is_token_char(int ch) { return ch > 32 && ch < 127 && ch != ':'; }

static const char *srv_find_crlf(const char *p, const char *end) {
  for (; p + 1 < end; p++)
    if (p[0] == '\r' && p[1] == '\n') return p;
  return NULL;
}

static const char *srv_skip_spaces(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t')) p++;
  return p;
}

static size_t srv_copy_token(char *dst, size_t cap, const char *p, const char *end) {
  size_t n = 0;
  while (p + n < end && p[n] != ' ' && p[n] != '?' && n + 1 < cap) {
    dst[n] = p[n];
    n++;
  }
  dst[n] = 0;
  return n;
}

static int srv_lower_equal(const char *a, size_t alen, const char *b) {
  size_t blen = strlen(b);
  if (alen != blen) return 0;
  for (size_t i = 0; i < alen; i++)
    if (tolower((unsigned char)a[i]) != b[i]) return 0;
  return 1;
}

static int srv_parse_method(struct request *r, const char **pp, const char *end) {
  const char *p = *pp;
  size_t n = srv_copy_token(r->method, sizeof r->method, p, end);
  if (n == 0 || p + n >= end || p[n] != ' ') return -1;
  *pp = p + n + 1;
  return 0;
}

static int srv_parse_target(struct request *r, const char **pp, const char *end) {
  const char *p = *pp;
  size_t n = srv_copy_token(r->path, sizeof r->path, p, end);
  p += n;
  r->query[0] = 0;
  if (p < end && *p == '?') {
    p++;
    size_t q = 0;
    while (p < end && *p != ' ' && q + 1 < sizeof r->query) r->query[q++] = *p++;
    r->query[q] = 0;
  }
  if (p >= end || *p != ' ') return -1;
  *pp = p + 1;
  return 0;
}

static int srv_parse_version(struct request *r, const char *p, const char *end) {
  if (end - p != 8 || memcmp(p, "HTTP/1.", 7)) return -1;
  r->keep_alive = p[7] == '1';
  return 0;
}

static int srv_parse_request_line(struct request *r, const char *p, const char *end) {
  if (srv_parse_method(r, &p, end)) return -1;
  if (srv_parse_target(r, &p, end)) return -1;
  return srv_parse_version(r, p, end);
}

static void srv_header_value(char *dst, size_t cap, const char *v, const char *end) {
  size_t n = (size_t)(end - v);
  if (n >= cap) n = cap - 1;
  memcpy(dst, v, n);
  dst[n] = 0;
}

static int srv_parse_header(struct request *r, const char *p, const char *end) {
  const char *name = p;
  while (p < end && srv_is_token_char((unsigned char)*p)) p++;
  if (p >= end || *p != ':') return -1;
  size_t nlen = (size_t)(p - name);
  const char *v = srv_skip_spaces(p + 1, end);
  r->header_count++;
  if (srv_lower_equal(name, nlen, "connection")) {
    if (srv_lower_equal(v, (size_t)(end - v), "close")) r->keep_alive = 0;
    if (srv_lower_equal(v, (size_t)(end - v), "keep-alive")) r->keep_alive = 1;
  } else if (srv_lower_equal(name, nlen, "content-length")) {
    r->content_length = strtoul(v, NULL, 10);
  } else if (srv_lower_equal(name, nlen, "user-agent")) {
    srv_header_value(r->user_agent, sizeof r->user_agent, v, end);
  }
  return 0;
}

/* Returns the request's length in the buffer, 0 when incomplete, -1 when malformed. */
static long srv_parse_request(struct request *r, const char *buf, size_t len) {
  const char *end = buf + len;
  const char *eol = srv_find_crlf(buf, end);
  if (!eol) return 0;
  memset(r, 0, sizeof *r);
  if (srv_parse_request_line(r, buf, eol)) return -1;
  const char *p = eol + 2;
  for (;;) {
    eol = srv_find_crlf(p, end);
    if (!eol) return 0;
    if (eol == p) break;
    if (srv_parse_header(r, p, eol)) return -1;
    p = eol + 2;
  }
  p += 2;
  if ((size_t)(end - p) < r->content_length) return 0;
  return (long)(p - buf) + (long)r->content_length;
}

static unsigned long srv_hash(const char *s) {
  unsigned long h = 1469598103934665603ul;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ul;
  return h;
}

static void srv_body_append(struct response *res, const char *s) {
  size_t n = strlen(s);
  if (res->body_len + n >= sizeof res->body) n = sizeof res->body - 1 - res->body_len;
  memcpy(res->body + res->body_len, s, n);
  res->body_len += n;
  res->body[res->body_len] = 0;
}

static void srv_handle_index(const struct request *r, struct response *res) {
  (void)r;
  res->content_type = "text/html";
  srv_body_append(res, "<html><body><h1>xcover bench</h1><p>hello</p></body></html>\n");
}

static void srv_handle_hash(const struct request *r, struct response *res) {
  char line[64];
  res->content_type = "text/plain";
  snprintf(line, sizeof line, "%016lx\n", srv_hash(r->query));
  srv_body_append(res, line);
}

static void srv_handle_stats(const struct request *r, struct response *res) {
  char line[128];
  res->content_type = "application/json";
  snprintf(line, sizeof line, "{\"requests\":%lu,\"headers\":%d,\"agent_len\":%zu}\n",
           request_total, r->header_count, strlen(r->user_agent));
  srv_body_append(res, line);
}

static void srv_handle_not_found(const struct request *r, struct response *res) {
  (void)r;
  res->status = 404;
  res->content_type = "text/plain";
  srv_body_append(res, "not found\n");
}

struct route {
  const char *path;
  void (*handler)(const struct request *, struct response *);
};

static const struct route routes[] = {
    {"/", srv_handle_index},
    {"/index.html", srv_handle_index},
    {"/hash", srv_handle_hash},
    {"/stats", srv_handle_stats},
};

static void srv_route(const struct request *r, struct response *res) {
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if (!strcmp(routes[i].path, r->path)) {
      routes[i].handler(r, res);
      return;
    }
  srv_handle_not_found(r, res);
}

static const char *srv_status_text(int status) {
  switch (status) {
  case 200: return "OK";
  case 400: return "Bad Request";
  case 404: return "Not Found";
  default: return "Unknown";
  }
}

static size_t srv_format_headers(char *out, size_t cap, const struct response *res, int keep) {
  int n = snprintf(out, cap,
                   "HTTP/1.1 %d %s\r\nServer: xcover-bench\r\nContent-Type: %s\r\n"
                   "Content-Length: %zu\r\nConnection: %s\r\n\r\n",
                   res->status, srv_status_text(res->status), res->content_type, res->body_len,
                   keep ? "keep-alive" : "close");
  return n < 0 ? 0 : (size_t)n;
}

static int srv_queue_response(struct conn *c, const struct response *res, int keep) {
  size_t h = srv_format_headers(c->out + c->out_len, sizeof c->out - c->out_len, res, keep);
  if (c->out_len + h + res->body_len > sizeof c->out) return -1;
  c->out_len += h;
  memcpy(c->out + c->out_len, res->body, res->body_len);
  c->out_len += res->body_len;
  return 0;
}

static int srv_flush(struct conn *c) {
  while (c->out_off < c->out_len) {
    ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
    if (n < 0) return errno == EAGAIN ? 0 : -1;
    c->out_off += (size_t)n;
  }
  c->out_len = c->out_off = 0;
  return 0;
}

static void srv_consume(struct conn *c, size_t n) {
  memmove(c->in, c->in + n, c->in_len - n);
  c->in_len -= n;
}

/* Returns -1 to close the connection. */
static int srv_serve_buffered(struct conn *c) {
  struct request req;
  for (;;) {
    long used = srv_parse_request(&req, c->in, c->in_len);
    if (used == 0) return 0;
    struct response res = {.status = 200, .content_type = "text/plain"};
    if (used < 0) {
      res.status = 400;
      srv_body_append(&res, "bad request\n");
      srv_queue_response(c, &res, 0);
      srv_flush(c);
      return -1;
    }
    request_total++;
    srv_route(&req, &res);
    if (srv_queue_response(c, &res, req.keep_alive)) return -1;
    srv_consume(c, (size_t)used);
    if (!req.keep_alive) {
      srv_flush(c);
      return -1;
    }
  }
}

static int srv_on_readable(struct conn *c) {
  for (;;) {
    if (c->in_len == sizeof c->in) return -1;
    ssize_t n = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
    if (n == 0) return -1;
    if (n < 0) {
      if (errno == EAGAIN) break;
      return -1;
    }
    c->in_len += (size_t)n;
    if ((size_t)n < 1024) break;
  }
  if (srv_serve_buffered(c)) return -1;
  return srv_flush(c);
}

static void srv_accept_all(int ep, int lfd) {
  for (;;) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    srv_set_nonblocking(fd);
    struct conn *c = srv_conn_new(fd);
    if (!c) {
      close(fd);
      continue;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
}

static int srv_listen(unsigned short *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 128)) return -1;
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  *port = ntohs(a.sin_port);
  srv_set_nonblocking(fd);
  return fd;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, srv_on_signal);
  signal(SIGINT, srv_on_signal);
  unsigned short port;
  int lfd = srv_listen(&port);
  if (lfd < 0) {
    perror("listen");
    return 1;
  }
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  ev = (struct epoll_event){.events = EPOLLIN, .data.fd = 0};
  epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
  printf("port %u\n", port);
  fflush(stdout);
  struct epoll_event evs[64];
  while (!stopping) {
    int n = epoll_wait(ep, evs, 64, 200);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == lfd) {
        srv_accept_all(ep, lfd);
      } else if (fd == 0) {
        char b[64];
        if (read(0, b, sizeof b) <= 0) stopping = 1;
      } else if (conns[fd] && srv_on_readable(conns[fd])) {
        srv_conn_free(ep, conns[fd]);
      }
    }
  }
  return 0;
}
