/* fuzz.h: what the file-reading harnesses share: the fuzz input written to a
 * file of this process's own scratch folder (the parsers under test take
 * paths), and a valid tiny CLIP vocabulary to load models with. */
#ifndef DIFFUSE_FUZZ_H
#define DIFFUSE_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../test.h"

/* The process's scratch folder under /tmp, made on first use. */
static inline const char *fuzz_dir(void)
{
    static char dir[64];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/diffuse-fuzz-XXXXXX");
        if (!mkdtemp(dir))
            abort();
    }
    return dir;
}

/* fuzz_dir()/name holding size bytes of data; its path in path[4096]. */
static inline const char *fuzz_file(const char *name, const void *data, size_t size, char *path)
{
    snprintf(path, 4096, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0)
        abort();
    return path;
}

/* A folder with test_tiny_vocab's vocab.json and no merges, made once. */
static inline const char *fuzz_tiny_vocab(void)
{
    static char dir[4096];
    if (dir[0])
        return dir;
    char path[4096], *vocab = test_tiny_vocab("");
    snprintf(dir, sizeof dir, "%s/vocab", fuzz_dir());
    if (!vocab || mkdir(dir, 0700) != 0)
        abort();
    fuzz_file("vocab/vocab.json", vocab, strlen(vocab), path);
    fuzz_file("vocab/merges.txt", "#version: 0.2\n", 14, path);
    free(vocab);
    return dir;
}

#endif
