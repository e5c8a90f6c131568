/* test_process.c: diffuse_process_init, which main() of the CLI and the
 * plug-ins calls first: with neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT set
 * (and oneDNN built in) the program runs again in place with a short
 * GOMP_SPINCOUNT, once, with the same arguments; a choice already made is
 * left alone. The test runs itself as the child. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/diffuse.h"
#include "../engine/internal.h"
#include "test.h"

/* The child: counts its starts in the environment, then reports. */
static int child(char **argv)
{
    const char *runs = getenv("DIFFUSE_TEST_RUNS");
    char n[16];
    snprintf(n, sizeof n, "%d", runs ? atoi(runs) + 1 : 1);
    setenv("DIFFUSE_TEST_RUNS", n, 1);
    diffuse_process_init(argv);
    const char *policy = getenv("OMP_WAIT_POLICY"), *spin = getenv("GOMP_SPINCOUNT");
    printf("%s %s %s %s\n", policy ? policy : "-", spin ? spin : "-", getenv("DIFFUSE_TEST_RUNS"),
           argv[2]);
    return 0;
}

static void expect(const char *env, const char *self, const char *want)
{
    char cmd[PATH_MAX + 128], got[256] = "";
    snprintf(cmd, sizeof cmd,
             "env -u DIFFUSE_TEST_RUNS -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT %s '%s' "
             "child arg-kept",
             env, self);
    FILE *p = popen(cmd, "r");
    CHECK(p && fgets(got, sizeof got, p), "running %s", cmd);
    if (p)
        pclose(p);
    got[strcspn(got, "\n")] = 0;
    CHECK(strcmp(got, want) == 0, "%s: got '%s', want '%s'", env, got, want);
}

int main(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[1], "child") == 0)
        return child(argv);
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(n > 0, "readlink /proc/self/exe");
    self[n > 0 ? n : 0] = 0;
    const bool dnnl = diffuse_dnnl_major() > 0;
    expect("", self, dnnl ? "- 3000 2 arg-kept" : "- - 1 arg-kept");
    expect("OMP_WAIT_POLICY=ACTIVE", self, "ACTIVE - 1 arg-kept");
    expect("OMP_WAIT_POLICY=passive", self, "passive - 1 arg-kept");
    expect("GOMP_SPINCOUNT=100", self, "- 100 1 arg-kept");
    TEST_END();
}
