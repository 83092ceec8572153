/*
 * fuzz_plugin.c -- fuzzes a user's allocator built as a ksalloc plugin, without rebuilding
 * ksalloc: the plugin is named at run time, by -plugin=PATH on the command line or by the
 * environment variable KSALLOC_FUZZ_PLUGIN=PATH (the flag wins). With neither, it fuzzes the
 * plugin shipped beside the binary, fuzz_plugin_example.so (the build puts the example plugin
 * there), so that a run with no flags at all works: OSS-Fuzz's build check, its coverage job and
 * the AFL path pass none. A catalogue name instead of a path fuzzes that built-in allocator the
 * same way, which is how the multi-threaded schedule below is exercised on the built-in
 * thread-safe ones.
 *
 * Checks, per input: (1) the single-threaded run of fuzz_alloc_* (allocator input format of
 * fuzz_helpers.h, so `ksalloc replay --fuzz-input FILE --plugin PATH` replays it); (2) when the
 * entry says KS_CAP_THREAD_SAFE, a two-thread schedule on ONE instance: the config is decoded
 * again from the same bytes and pin 0's framing opens one verified instance; the op bytes after
 * the config are dealt alternately to thread 0 and thread 1, and each thread decodes its own op
 * list with ks_decode_op against its own live frames -- so what each thread does is fixed by the
 * input and its own allocation outcomes, and only the interleaving is left to the scheduler,
 * which is what a race needs. Both threads start together at a barrier. A racy allocator shows
 * up as verifier faults (double hand-out, overlap, corruption of a frame the other thread
 * holds, bad free, self-check), which abort like any other.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_helpers.h"

#define PLUGIN_ENV "KSALLOC_FUZZ_PLUGIN"
#define PLUGIN_FLAG "-plugin="
#define DEFAULT_PLUGIN "fuzz_plugin_example.so"
#define MT_THREADS 2u
#define MT_MAX_LIVE_PER_THREAD 1024u

static ks_plugin *loaded_plugin; /* loaded once; the allocator under test, not per-input state */
static const ks_allocator_entry *fuzzed_entry;
static char plugin_path[4096];
static char allocator_spec[sizeof "plugin:" + 4096];


static const char *plugin_argument(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], PLUGIN_FLAG, strlen(PLUGIN_FLAG)) == 0)
            return argv[i] + strlen(PLUGIN_FLAG);
    return getenv(PLUGIN_ENV);
}

/* A bare file name that is not in the working directory is looked up next to the fuzz binary
 * (/proc/self/exe, since argv[0] may be a bare name found on PATH): OSS-Fuzz ships the plugin
 * beside the target and runs the target from anywhere (its build check even moves $OUT). */
static const char *locate_plugin(const char *path)
{
    char exe[sizeof plugin_path];
    ssize_t exe_bytes = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (strchr(path, '/') != NULL || access(path, F_OK) == 0 || exe_bytes <= 0)
        return path;
    exe[exe_bytes] = '\0';
    const char *slash = strrchr(exe, '/');
    int written = snprintf(plugin_path, sizeof plugin_path, "%.*s/%s", (int)(slash - exe), exe, path);
    return written > 0 && (size_t)written < sizeof plugin_path && access(plugin_path, F_OK) == 0 ? plugin_path : path;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *path = plugin_argument(*argc, *argv);
    ks_fuzz_set_identity("fuzz_plugin", NULL);
    bool named = path != NULL;
    if (!named)
        path = DEFAULT_PLUGIN;
    KS_FUZZ_CHECK(path[0] != '\0', "the plugin to fuzz is empty: -plugin=PATH.so or " PLUGIN_ENV
                                    "=PATH.so (or a catalogue name); with neither, " DEFAULT_PLUGIN
                                    " beside the binary");
    KS_FUZZ_CHECK(strlen(path) < sizeof plugin_path, "plugin path longer than %zu bytes", sizeof plugin_path - 1);
    fuzzed_entry = ks_catalogue_find(path);
    if (fuzzed_entry == NULL)
        path = locate_plugin(path);
    KS_FUZZ_CHECK(named || fuzzed_entry != NULL || access(path, F_OK) == 0,
                  "no plugin named (-plugin=PATH.so or " PLUGIN_ENV "=PATH.so) and no " DEFAULT_PLUGIN
                  " beside the fuzz binary or in the working directory");
    if (fuzzed_entry != NULL) {
        snprintf(allocator_spec, sizeof allocator_spec, "%s", path);
    } else {
        ks_error err;
        ks_error_clear(&err);
        NTSTATUS status = ks_plugin_load(path, &loaded_plugin, &err);
        KS_FUZZ_CHECK(NT_SUCCESS(status), "%s", err.message);
        fuzzed_entry = ks_plugin_entry(loaded_plugin);
        snprintf(allocator_spec, sizeof allocator_spec, "plugin:%s", path);
    }
    ks_fuzz_set_identity("fuzz_plugin", allocator_spec);
    return 0;
}

/* ---- the two-thread schedule ---------------------------------------------------------------- */

typedef struct mt_thread {
    pthread_t thread;
    pthread_barrier_t *start;
    void *instance; /* the verified instance both threads share */
    uint8_t *op_bytes;
    size_t op_bytes_count;
    uint32_t frames; /* settled Frames, for the live view */
    void *live[MT_MAX_LIVE_PER_THREAD]; /* this thread's frames, oldest first */
    uint32_t live_count;
} mt_thread;

static void mt_step(mt_thread *self, const ks_op *op)
{
    if (op->kind == KS_OP_ALLOCATE) {
        if (self->live_count == MT_MAX_LIVE_PER_THREAD)
            return; /* an unbounded allocator: this thread holds enough */
        void *frame = ks_verifier_dispatch.Allocate(self->instance);
        if (frame != NULL)
            self->live[self->live_count++] = frame;
        return;
    }
    void *frame = self->live[op->arg];
    if (op->kind == KS_OP_TOUCH) {
        ks_verifier_touch(self->instance, frame);
        return;
    }
    memmove(&self->live[op->arg], &self->live[op->arg + 1], (self->live_count - op->arg - 1) * sizeof(void *));
    self->live_count--;
    ks_verifier_dispatch.Free(self->instance, frame);
}

static void *mt_thread_main(void *arg)
{
    mt_thread *self = arg;
    ks_byte_reader reader = {.data = self->op_bytes, .size_bytes = self->op_bytes_count, .offset = 0};
    ks_live_view view = {.pin_count = 1};
    ks_op op;
    pthread_barrier_wait(self->start);
    for (;;) {
        view.live[0] = self->live_count;
        view.frames[0] = self->frames;
        if (!ks_decode_op(&reader, &view, &op))
            break;
        mt_step(self, &op);
    }
    return NULL;
}

/* Deals the op bytes alternately to the threads. */
static void mt_deal(mt_thread *threads, const uint8_t *op_bytes, size_t count)
{
    for (unsigned t = 0; t < MT_THREADS; t++) {
        threads[t].op_bytes = malloc(count / MT_THREADS + 1);
        KS_FUZZ_CHECK(threads[t].op_bytes != NULL, "out of memory");
        threads[t].op_bytes_count = 0;
    }
    for (size_t i = 0; i < count; i++) {
        mt_thread *to = &threads[i % MT_THREADS];
        to->op_bytes[to->op_bytes_count++] = op_bytes[i];
    }
}

static void mt_run(void *instance, uint32_t frames, const uint8_t *op_bytes, size_t count)
{
    static mt_thread threads[MT_THREADS]; /* 8 KiB each: off the stack; cleared per input */
    pthread_barrier_t start;
    memset(threads, 0, sizeof threads);
    mt_deal(threads, op_bytes, count);
    KS_FUZZ_CHECK(pthread_barrier_init(&start, NULL, MT_THREADS) == 0, "pthread_barrier_init failed");
    for (unsigned t = 0; t < MT_THREADS; t++) {
        threads[t].start = &start;
        threads[t].instance = instance;
        threads[t].frames = frames;
        KS_FUZZ_CHECK(pthread_create(&threads[t].thread, NULL, mt_thread_main, &threads[t]) == 0,
                      "pthread_create failed");
    }
    for (unsigned t = 0; t < MT_THREADS; t++)
        pthread_join(threads[t].thread, NULL);
    pthread_barrier_destroy(&start);
    for (unsigned t = 0; t < MT_THREADS; t++) {
        while (threads[t].live_count > 0)
            ks_verifier_dispatch.Free(instance, threads[t].live[--threads[t].live_count]);
        free(threads[t].op_bytes);
    }
}

static void run_threaded(const uint8_t *data, size_t size)
{
    ks_byte_reader reader = {.data = data, .size_bytes = size, .offset = 0};
    ks_allocator_entry capped;
    const ks_allocator_entry *const entries[] = {ks_fuzz_capped_entry(fuzzed_entry, &capped)};
    ks_workload_config config;
    ks_decode_config(&reader, entries, 1, &config);
    /* One instance on a private heap: the schedule is about two threads on one instance. */
    KSPIN pin = {.abi_version = KSALLOC_ABI_VERSION, .id = 0, .name = "pin0", .framing = config.pins[0].framing};
    ks_verifier *verifier = ks_fuzz_verifier_begin();
    ks_verifier_pin verifier_pin = {.verifier = verifier, .inner = &capped, .pin = &pin};
    KSALLOCATOR_FRAMING framing = config.pins[0].framing;
    void *instance = NULL;
    if (NT_SUCCESS(ks_verifier_dispatch.InitializeAllocator(&verifier_pin, &framing, &instance))) {
        mt_run(instance, framing.Frames, data + reader.offset, size - reader.offset);
        ks_verifier_dispatch.DeleteAllocator(instance);
    }
    ks_fuzz_verifier_end(verifier);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ks_fuzz_run_allocator_input(data, size, fuzzed_entry);
    if (fuzzed_entry->caps & KS_CAP_THREAD_SAFE)
        run_threaded(data, size);
    return 0;
}
