/*
 * The demo target of `xcover demo`: a small program with a few hundred functions that works
 * in visible phases, so coverage grows while you watch.
 *
 * Four stages (parse, plan, execute, render), each with eight components of ten functions.
 * Every few seconds the program moves to the next phase and calls a wider set of functions;
 * some functions are hot, some are cold, and the "error" paths are never called, so the
 * coverage never reaches 100%. It prints a line per phase on stderr and runs until killed
 * (or for argv[1] seconds).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef unsigned long (*work_fn)(unsigned long);

#define STEP(stage, comp, n)                                                               \
  __attribute__((noinline)) unsigned long stage##_##comp##_step##n(unsigned long x) {     \
    return (x ^ (0x9e3779b97f4a7c15ul * (n + 1))) + (x >> 7) + n;                         \
  }
#define STEPS(stage, comp)                                                                 \
  STEP(stage, comp, 0) STEP(stage, comp, 1) STEP(stage, comp, 2) STEP(stage, comp, 3)     \
  STEP(stage, comp, 4) STEP(stage, comp, 5) STEP(stage, comp, 6) STEP(stage, comp, 7)     \
  __attribute__((noinline)) unsigned long stage##_##comp##_on_error(unsigned long x) {    \
    fprintf(stderr, "demo: " #stage "/" #comp " failed at %lu\n", x);                     \
    return 0;                                                                              \
  }                                                                                        \
  __attribute__((noinline)) unsigned long stage##_##comp##_run(unsigned long x,           \
                                                               int width) {                \
    static const work_fn steps[] = {                                                       \
        stage##_##comp##_step0, stage##_##comp##_step1, stage##_##comp##_step2,            \
        stage##_##comp##_step3, stage##_##comp##_step4, stage##_##comp##_step5,            \
        stage##_##comp##_step6, stage##_##comp##_step7};                                   \
    for (int i = 0; i < width && i < 8; i++) x = steps[i](x);                              \
    if (x == 0xdeadbeefdeadbeeful) return stage##_##comp##_on_error(x);                    \
    return x;                                                                              \
  }

#define COMPONENTS(stage)                                                                  \
  STEPS(stage, config) STEPS(stage, network) STEPS(stage, storage) STEPS(stage, cache)     \
  STEPS(stage, auth) STEPS(stage, metrics) STEPS(stage, scheduler) STEPS(stage, codec)

COMPONENTS(parse)
COMPONENTS(plan)
COMPONENTS(execute)
COMPONENTS(render)

typedef unsigned long (*run_fn)(unsigned long, int);
#define RUNS(stage)                                                                        \
  {stage##_config_run,  stage##_network_run, stage##_storage_run,   stage##_cache_run,     \
   stage##_auth_run,    stage##_metrics_run, stage##_scheduler_run, stage##_codec_run}

static const run_fn stages[4][8] = {RUNS(parse), RUNS(plan), RUNS(execute), RUNS(render)};
static const char *stage_names[4] = {"parse", "plan", "execute", "render"};

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  double limit = argc > 1 ? atof(argv[1]) : 0;
  signal(SIGTERM, on_term);
  signal(SIGINT, on_term);
  double start = now();
  unsigned long acc = 1;
  int phase = -1;
  while (!stop) {
    double t = now() - start;
    if (limit > 0 && t >= limit) break;
    /* A new phase every 3 seconds: stage = phase % 4, and later rounds go wider. */
    int p = (int)(t / 3.0);
    if (p != phase) {
      phase = p;
      fprintf(stderr, "demo: phase %d (%s)\n", phase, stage_names[phase % 4]);
    }
    int stage = phase % 4;
    int components = 2 + phase;   /* more components each phase */
    int width = 2 + phase / 2;    /* deeper into each component */
    for (int c = 0; c < components && c < 8; c++) {
      /* Hot components run more often than cold ones. */
      int reps = c < 2 ? 200 : (c < 5 ? 20 : 1);
      for (int r = 0; r < reps; r++) acc = stages[stage][c](acc, width);
    }
    usleep(2000);
  }
  printf("demo: done, checksum %lu\n", acc);
  return 0;
}
