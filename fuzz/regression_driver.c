/*
 * regression_driver.c -- runs a fuzz target without libFuzzer, over files and directories, so
 * that every checked-in corpus replays with any C compiler and in any build mode (zstd's
 * tests/fuzz/regression_driver.c is the model). Linked in place of -fsanitize=fuzzer.
 *
 * usage: regress_<target> [-flags ...] PATH...
 *   PATH a file: run it as one input; a directory: run every regular file in it (sorted, not
 *   recursing, so that the order and the output are stable). Arguments starting with '-' are
 *   handed to LLVMFuzzerInitialize (e.g. -plugin=PATH) and otherwise ignored, so a libFuzzer
 *   command line works unchanged.
 * Exit status: 0 when every input ran, 1 when a path could not be read, 2 on bad usage; a
 * failing input aborts inside the target, which names it on stderr first.
 *
 * Like libFuzzer, each input is handed over in a buffer of exactly its size (malloc'd, so ASan
 * catches a read past the end), and LLVMFuzzerInitialize runs once before the first input.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int read_file(const char *path, uint8_t **data, size_t *size_bytes)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return -1;
    size_t capacity = 4096, used = 0;
    uint8_t *buffer = malloc(capacity);
    for (size_t got; buffer != NULL && (got = fread(buffer + used, 1, capacity - used, file)) > 0;) {
        used += got;
        if (used == capacity) {
            uint8_t *grown = realloc(buffer, capacity * 2);
            if (grown == NULL) {
                free(buffer);
                buffer = NULL;
            }
            buffer = grown;
            capacity *= 2;
        }
    }
    int failed = buffer == NULL || ferror(file);
    fclose(file);
    if (failed) {
        free(buffer);
        return -1;
    }
    /* Exactly size bytes, so that a read past the input's end is an ASan report. */
    uint8_t *exact = malloc(used ? used : 1);
    if (exact == NULL) {
        free(buffer);
        return -1;
    }
    memcpy(exact, buffer, used);
    free(buffer);
    *data = exact;
    *size_bytes = used;
    return 0;
}

static int run_file(const char *path, size_t *inputs_run)
{
    uint8_t *data = NULL;
    size_t size_bytes = 0;
    if (read_file(path, &data, &size_bytes) != 0) {
        fprintf(stderr, "regression driver: %s: cannot read: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(stderr, "regression driver: running %s (%zu bytes)\n", path, size_bytes);
    LLVMFuzzerTestOneInput(data, size_bytes);
    free(data);
    ++*inputs_run;
    return 0;
}

static int by_name(const void *left, const void *right)
{
    return strcmp(*(char *const *)left, *(char *const *)right);
}

static int run_directory(const char *path, size_t *inputs_run)
{
    struct dirent **names = NULL;
    int count = scandir(path, &names, NULL, NULL);
    if (count < 0) {
        fprintf(stderr, "regression driver: %s: cannot list: %s\n", path, strerror(errno));
        return -1;
    }
    char **paths = calloc((size_t)count + 1, sizeof *paths);
    size_t path_count = 0;
    for (int i = 0; i < count; i++) {
        char full[4096];
        struct stat info;
        if (paths != NULL && names[i]->d_name[0] != '.' &&
            (size_t)snprintf(full, sizeof full, "%s/%s", path, names[i]->d_name) < sizeof full &&
            stat(full, &info) == 0 && S_ISREG(info.st_mode))
            paths[path_count++] = strdup(full);
        free(names[i]);
    }
    free(names);
    if (paths == NULL)
        return -1;
    qsort(paths, path_count, sizeof *paths, by_name);
    int result = 0;
    for (size_t i = 0; i < path_count; i++) {
        if (paths[i] == NULL || run_file(paths[i], inputs_run) != 0)
            result = -1;
        free(paths[i]);
    }
    free(paths);
    return result;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s [-flag ...] FILE_OR_DIRECTORY...\n", argv[0]);
        return 2;
    }
    if (LLVMFuzzerInitialize != NULL)
        LLVMFuzzerInitialize(&argc, &argv);
    size_t inputs_run = 0;
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-')
            continue;
        struct stat info;
        if (stat(argv[i], &info) != 0) {
            fprintf(stderr, "regression driver: %s: %s\n", argv[i], strerror(errno));
            failed = 1;
        } else if (S_ISDIR(info.st_mode) ? run_directory(argv[i], &inputs_run) != 0
                                          : run_file(argv[i], &inputs_run) != 0) {
            failed = 1;
        }
    }
    fprintf(stderr, "regression driver: %zu inputs run%s\n", inputs_run, failed ? ", some paths unreadable" : "");
    return failed;
}
