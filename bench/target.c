/*
 * Benchmark target: times calls of small functions with clock_gettime, so the figures do
 * not depend on who attached what. Commands arrive on stdin, one per line, results go to
 * stdout, one line each:
 *
 *   run <fn> <calls>   call <fn> <calls> times; prints "<ns per call>"
 *   miss <n> [<first>] call n distinct functions once each (miss_<first> onwards, default
 *                      0); prints "<ns per call>"
 *   quit
 *
 * <fn> is one of: push (a `push %rbp` prologue), nop5 (a 5-byte nop first), lea (a `lea`
 * first: an instruction the kernel must single-step), idle_callee (the function the
 * "idle" scenario calls while a probe sits on another one).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

unsigned long f_push(unsigned long);
unsigned long f_nop5(unsigned long);
unsigned long f_lea(unsigned long);
unsigned long f_idle(unsigned long);
extern unsigned long (*const miss_table[])(unsigned long);
extern const unsigned long miss_count;

static unsigned long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000ull + t.tv_nsec;
}

int main(void) {
  char line[256];
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("ready\n");
  volatile unsigned long sink = 0;
  while (fgets(line, sizeof line, stdin)) {
    char fn[64];
    unsigned long n;
    if (sscanf(line, "run %63s %lu", fn, &n) == 2) {
      unsigned long (*f)(unsigned long) = NULL;
      if (!strcmp(fn, "push")) f = f_push;
      else if (!strcmp(fn, "nop5")) f = f_nop5;
      else if (!strcmp(fn, "lea")) f = f_lea;
      else if (!strcmp(fn, "idle_callee")) f = f_idle;
      if (!f || n == 0) { printf("error\n"); continue; }
      unsigned long x = 0;
      unsigned long long t0 = now_ns();
      for (unsigned long i = 0; i < n; i++) x = f(x);
      unsigned long long t1 = now_ns();
      sink += x;
      printf("%.3f\n", (double)(t1 - t0) / n);
    } else if (sscanf(line, "miss %lu", &n) == 1) {
      unsigned long first = 0;
      sscanf(line, "miss %lu %lu", &n, &first);
      if (first > miss_count) first = miss_count;
      if (n > miss_count - first) n = miss_count - first;
      unsigned long x = 0;
      unsigned long long t0 = now_ns();
      for (unsigned long i = first; i < first + n; i++) x = miss_table[i](x);
      unsigned long long t1 = now_ns();
      sink += x;
      printf("%.3f\n", (double)(t1 - t0) / (n ? n : 1));
    } else if (!strncmp(line, "quit", 4)) {
      break;
    } else {
      printf("error\n");
    }
  }
  return (int)(sink & 0);
}
