/* Generator of xcover JSON reports for the merge-scale benchmark (scripts/bench.sh):
 *
 *   genreports DIR REPORTS FUNCTIONS
 *
 * writes DIR/r<i>.json, REPORTS reports of one build (build-id "be4c…"), each of FUNCTIONS
 * functions of the module "app" (fn_<j> at offset 0x1000 + 16 j), from pid 100000 + i, with
 * an observation window, as xcover writes them (compact: no indentation). Function j of
 * report i has (i * 31 + j * 17) % 5 hits. Prints the total of all hits and the bytes
 * written, so the merged report can be checked. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: genreports DIR REPORTS FUNCTIONS\n");
        return 2;
    }
    const char *dir = argv[1];
    long reports = atol(argv[2]), funcs = atol(argv[3]);
    unsigned long long total = 0, bytes = 0;
    static char buf[1 << 20];
    for (long i = 0; i < reports; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/r%ld.json", dir, i);
        FILE *f = fopen(path, "w");
        if (!f) {
            perror(path);
            return 1;
        }
        setvbuf(f, buf, _IOFBF, sizeof buf);
        fprintf(f,
                "{\"schema_version\":1,\"funcs_traced\":[],\"funcs_ack\":[],\"cov_by_func\":0,"
                "\"exe_path\":\"/srv/app\",\"pid\":%ld,\"pids\":[%ld],"
                "\"build_id\":\"be4c0ffee0ddf00d\",\"kernel\":\"6.1.0\",\"xcover_version\":\"0.1.0\","
                "\"generated_at\":\"2026-01-01T01:00:00.000000Z\","
                "\"observed_from\":\"2026-01-01T00:00:00.000000Z\","
                "\"observed_until\":\"2026-01-01T00:59:00.000000Z\",\"sessions\":1,\"functions\":[",
                100000 + i, 100000 + i);
        for (long j = 0; j < funcs; j++) {
            long n = (i * 31 + j * 17) % 5;
            total += n;
            fprintf(f, "%s{\"name\":\"fn_%ld\",\"offset\":%ld,\"hit\":%s,\"hits\":%ld,\"module\":\"app\"}",
                    j ? "," : "", j, 0x1000 + 16 * j, n ? "true" : "false", n);
        }
        fputs("]}\n", f);
        bytes += (unsigned long long)ftell(f);
        if (fclose(f) != 0) {
            perror(path);
            return 1;
        }
    }
    printf("%llu %llu\n", total, bytes);
    return 0;
}
