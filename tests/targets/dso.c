/* The small library malloc_dlopen loads and unloads in a loop. */
int xcover_dso_value(int x) { return x * 7 + 3; }
