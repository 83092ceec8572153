/*
 * mt_stress.c -- the multi-threaded stress, built in MODE=tsan (tests/stress/stress.mk).
 *
 * A standalone program, not a Criterion test: Criterion's runner cannot start under TSan
 * (Snaipe/Criterion#274). For every catalogued allocator with KS_CAP_THREAD_SAFE it runs the
 * three multi-threaded profiles (private, producer-consumer, all-to-all) through one verifier
 * session per case, with threads exiting and being replaced during the run (thread churn), so
 * frames allocated by a thread that has exited are freed by another and per-thread caches are
 * torn down while their frames are still live elsewhere. For EVERY catalogued allocator it then
 * runs a single-thread conformance smoke: each single-thread profile through the verifier. Two
 * cases stand apart from the catalogue walk: the sharded live-frame set of the thread-safe peers
 * (allocators/frame_set.c) hammered directly, its bias revoked while its first thread is busy,
 * frames released by threads that did not insert them; and every entry's bare hook (the library
 * as its users call it) with frames allocated on one thread and freed on another.
 *
 * One line per case, then "stress: N passed, N failed". Exit status: 0 when every case passed,
 * 1 when one failed (a verifier fault, a DMA checker report or a run error); a TSan report ends the
 * process at once with exit code 66 (halt_on_error=1 exitcode=66, set below as this binary's
 * default and by the make target). KS_CAP_DMA allocators run on an emulated DMA device with the
 * default options, as the engine gives them.
 *
 * Not a benchmark: the op counts are sized to finish in well under two minutes under TSan on two
 * cores with the whole catalogue.
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../allocators/frame_set.h"
#include "catalogue.h"
#include "mt.h"
#include "verifier.h"
#include "workload.h"

#if defined(__SANITIZE_THREAD__)
#define KS_STRESS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KS_STRESS_TSAN 1
#endif
#endif

#ifdef KS_STRESS_TSAN
/* TSan reads this before main: any report ends the run with exit code 66, even when the binary is
 * started by hand without TSAN_OPTIONS (which, when set, take precedence). */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "halt_on_error=1 exitcode=66 second_deadlock_stack=1";
}
#endif

typedef struct stress_config {
    uint64_t mt_ops;       /* op choices per multi-threaded case */
    uint64_t st_ops;       /* ops per single-thread profile */
    unsigned threads;
    uint64_t churn_ops;
    uint64_t seed;
    const char *only;      /* run one allocator, or NULL */
    KSALLOCATOR_FRAMING framing;
} stress_config;

typedef struct stress_tally {
    unsigned passed;
    unsigned failed;
} stress_tally;

static uint64_t monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

/* Prints the case's line and counts it. why is NULL when the case passed. */
static void report(stress_tally *tally, const char *allocator, const char *what, uint64_t elapsed_ns,
                   const char *why)
{
    printf("%-4s %-12s %-44s %8.1f ms%s%s\n", why ? "FAIL" : "ok", allocator, what, (double)elapsed_ns / 1e6,
           why ? "  " : "", why ? why : "");
    fflush(stdout);
    if (why)
        tally->failed++;
    else
        tally->passed++;
}

/* NULL when the session found nothing, else the first fault's story in buf. */
static const char *fault_story(const ks_verifier *verifier, char *buf, size_t buf_bytes)
{
    uint64_t faults = ks_verifier_fault_count(verifier);
    if (faults == 0)
        return NULL;
    const ks_fault *first = ks_verifier_fault_at(verifier, 0);
    snprintf(buf, buf_bytes, "%" PRIu64 " faults, first: %s", faults, first ? first->message : "?");
    return buf;
}

static void run_mt_case(const stress_config *config, const ks_allocator_entry *entry, ks_mt_profile profile,
                        bool fan_out, stress_tally *tally)
{
    char what[96], why[600];
    snprintf(what, sizeof what, "%s%s threads=%u churn=%" PRIu64, ks_mt_profile_name(profile),
             fan_out ? "/fan-out" : "", config->threads, config->churn_ops);
    ks_error err;
    ks_error_clear(&err);
    ks_verifier *verifier = NULL;
    /* Threaded: self_check only at DeleteAllocator, when the instance is quiescent (ksalloc.h does
     * not allow it concurrently with Allocate/Free; magazine documents that it must not be). */
    ks_verifier_options vopts = {.self_check_every_ops = 0};
    uint64_t start_ns = monotonic_ns();
    if (!NT_SUCCESS(ks_verifier_create(&vopts, &verifier, &err))) {
        report(tally, entry->name, what, 0, err.message);
        return;
    }
    ks_mt_options options = {.entry = entry, .framing = config->framing, .profile = profile,
                             .threads = config->threads, .ops = config->mt_ops, .seed = config->seed,
                             .churn_ops = config->churn_ops, .fan_out = fan_out, .verifier = verifier,
                             .stop_at_fault = true};
    ks_mt_stats stats;
    NTSTATUS status = ks_mt_run(&options, &stats, &err);
    const char *failure = !NT_SUCCESS(status) ? err.message : fault_story(verifier, why, sizeof why);
    if (failure == NULL && stats.total.frees != stats.total.allocations) {
        snprintf(why, sizeof why, "%" PRIu64 " frees for %" PRIu64 " allocations", stats.total.frees,
                 stats.total.allocations);
        failure = why;
    }
    report(tally, entry->name, what, monotonic_ns() - start_ns, failure);
    ks_verifier_destroy(verifier);
}

/* One single-thread profile through the engine and the verifier. */
static void run_st_case(const stress_config *config, const ks_allocator_entry *entry, ks_profile profile,
                        stress_tally *tally)
{
    char what[96], why[600];
    snprintf(what, sizeof what, "smoke %s", ks_profile_name(profile));
    ks_error err;
    ks_error_clear(&err);
    ks_workload_config workload;
    ks_verifier *verifier = NULL;
    ks_engine *engine = NULL;
    uint64_t start_ns = monotonic_ns();
    NTSTATUS status = ks_profile_config(profile, entry, entry->name, &config->framing, &workload, &err);
    if (NT_SUCCESS(status))
        status = ks_verifier_create(NULL, &verifier, &err);
    ks_engine_options eopts = {.verifier = verifier};
    if (NT_SUCCESS(status))
        status = ks_engine_open(&workload, &eopts, &engine, &err);
    if (NT_SUCCESS(status))
        status = ks_engine_run_profile(engine, profile, config->seed, config->st_ops, true, &err);
    if (engine != NULL) {
        ks_error close_err;
        NTSTATUS close_status = ks_engine_close(engine, &close_err);
        if (NT_SUCCESS(status) && !NT_SUCCESS(close_status)) {
            status = close_status;
            err = close_err;
        }
    }
    const char *failure = !NT_SUCCESS(status) ? err.message : fault_story(verifier, why, sizeof why);
    report(tally, entry->name, what, monotonic_ns() - start_ns, failure);
    if (verifier != NULL)
        ks_verifier_destroy(verifier);
}

/* ---- The sharded live-frame set, directly ---------------------------------------------------------- */

#define SET_STRESS_THREADS 4u
#define SET_STRESS_SLOTS 64u
#define SET_STRESS_HELD 16u

typedef struct set_stress {
    ks_sharded_frame_set set;
    _Atomic(uintptr_t) exchange[SET_STRESS_SLOTS]; /* frames handed between threads */
    atomic_bool others_started;
    uint64_t ops;
    char failure[4][160]; /* per thread: its first failure */
} set_stress;

typedef struct set_stress_thread {
    set_stress *stress;
    unsigned index;
    uintptr_t held[SET_STRESS_HELD];
    unsigned held_count;
} set_stress_thread;

/* A frame address no other thread makes: 64-byte aligned, the thread in the high bits. */
static uintptr_t set_stress_frame(unsigned thread, uint64_t serial)
{
    return ((uintptr_t)(thread + 1) << 40) | ((uintptr_t)serial << 6);
}

/* Inserts fresh frames, releases its own, and swaps frames through the exchange so that others
 * release them. Thread 0 starts alone (the set is biased to it) and keeps going while the others
 * start, so that their first calls revoke the bias under its feet. */
static void *set_stress_body(void *arg)
{
    set_stress_thread *self = arg;
    set_stress *stress = self->stress;
    char *failure = stress->failure[self->index];
    uint64_t state = 0x9E3779B97F4A7C15u * (self->index + 1);
    for (uint64_t op = 0; op < stress->ops && failure[0] == '\0'; op++) {
        if (self->index == 0 && op == stress->ops / 4)
            atomic_store(&stress->others_started, true);
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        uintptr_t frame = set_stress_frame(self->index, op + 1);
        if (!ks_sharded_frame_set_insert(&stress->set, (void *)frame)) {
            snprintf(failure, 160, "thread %u: insert %#lx failed", self->index, (unsigned long)frame);
            break;
        }
        if (state % 3 == 0) {
            uintptr_t taken = atomic_exchange(&stress->exchange[(state >> 8) % SET_STRESS_SLOTS], frame);
            if (taken != 0 && !ks_sharded_frame_set_release(&stress->set, (void *)taken))
                snprintf(failure, 160, "thread %u: frame %#lx from the exchange was not live", self->index,
                         (unsigned long)taken);
        } else if (self->held_count < SET_STRESS_HELD) {
            self->held[self->held_count++] = frame;
        } else if (!ks_sharded_frame_set_release(&stress->set, (void *)frame)) {
            snprintf(failure, 160, "thread %u: its own frame %#lx was not live", self->index, (unsigned long)frame);
        }
        if (self->held_count == SET_STRESS_HELD && state % 5 == 0) {
            uintptr_t oldest = self->held[0];
            memmove(self->held, self->held + 1, (SET_STRESS_HELD - 1) * sizeof self->held[0]);
            self->held_count--;
            if (!ks_sharded_frame_set_release(&stress->set, (void *)oldest))
                snprintf(failure, 160, "thread %u: held frame %#lx was not live", self->index, (unsigned long)oldest);
        }
    }
    return NULL;
}

static void run_frame_set_case(const stress_config *config, stress_tally *tally)
{
    char why[600] = "";
    uint64_t start_ns = monotonic_ns();
    set_stress *stress = calloc(1, sizeof *stress);
    set_stress_thread threads[SET_STRESS_THREADS];
    pthread_t handles[SET_STRESS_THREADS];
    if (stress == NULL || !ks_sharded_frame_set_init(&stress->set)) {
        report(tally, "frame_set", "sharded set: bias revoked mid-run, cross-thread releases", 0, "out of memory");
        free(stress);
        return;
    }
    stress->ops = config->mt_ops;
    for (unsigned index = 0; index < SET_STRESS_THREADS; index++) {
        threads[index] = (set_stress_thread){.stress = stress, .index = index};
        if (index == 1) /* the others start once thread 0 has the set to itself and is busy */
            while (!atomic_load(&stress->others_started))
                sched_yield();
        pthread_create(&handles[index], NULL, set_stress_body, &threads[index]);
    }
    size_t expected = 0;
    for (unsigned index = 0; index < SET_STRESS_THREADS; index++) {
        pthread_join(handles[index], NULL);
        expected += threads[index].held_count;
        if (why[0] == '\0' && stress->failure[index][0] != '\0')
            snprintf(why, sizeof why, "%s", stress->failure[index]);
    }
    for (unsigned slot = 0; slot < SET_STRESS_SLOTS; slot++)
        expected += atomic_load(&stress->exchange[slot]) != 0;
    size_t count = ks_sharded_frame_set_count(&stress->set);
    if (why[0] == '\0' && count != expected)
        snprintf(why, sizeof why, "%zu frames in the set, %zu live", count, expected);
    if (why[0] == '\0') {
        char check[400];
        if (!ks_sharded_frame_set_check(&stress->set, 64, "frame_set", check, sizeof check))
            snprintf(why, sizeof why, "%s", check);
    }
    ks_sharded_frame_set_destroy(&stress->set);
    free(stress);
    report(tally, "frame_set", "sharded set: bias revoked mid-run, cross-thread releases", monotonic_ns() - start_ns,
           why[0] ? why : NULL);
}

/* ---- Bare hooks: frames freed on the other thread ------------------------------------------------- */

#define BARE_QUEUE_SLOTS 32u

typedef struct bare_stress {
    const ks_bare_ops *bare;
    size_t frame_bytes;
    uint64_t ops;
    _Atomic(void *) queue[2][BARE_QUEUE_SLOTS]; /* queue[t]: frames thread t allocated, for the other */
    char failure[2][160];
} bare_stress;

typedef struct bare_stress_thread {
    bare_stress *stress;
    unsigned index;
} bare_stress_thread;

/* Each thread allocates frames, stamps them and offers them to the other, and frees (after
 * checking the stamp) the frames the other thread offered. */
static void *bare_stress_body(void *arg)
{
    bare_stress_thread *self = arg;
    bare_stress *stress = self->stress;
    const ks_bare_ops *bare = stress->bare;
    size_t frame_bytes = stress->frame_bytes, align_bytes = 64;
    for (uint64_t op = 0; op < stress->ops && stress->failure[self->index][0] == '\0'; op++) {
        void *frame = bare->allocate(frame_bytes, align_bytes);
        if (frame == NULL || ((uintptr_t)frame & (align_bytes - 1)) != 0) {
            snprintf(stress->failure[self->index], 160, "allocate: %p", frame);
            break;
        }
        uint64_t stamp = (uint64_t)(uintptr_t)frame ^ 0xB4BEu;
        memcpy(frame, &stamp, sizeof stamp);
        memcpy((char *)frame + frame_bytes - sizeof stamp, &stamp, sizeof stamp);
        void *mine = atomic_exchange(&stress->queue[self->index][op % BARE_QUEUE_SLOTS], frame);
        if (mine != NULL) /* the other thread did not take it: freed here after all */
            bare->free(mine, frame_bytes, align_bytes);
        void *theirs = atomic_exchange(&stress->queue[1 - self->index][op % BARE_QUEUE_SLOTS], NULL);
        if (theirs == NULL)
            continue;
        uint64_t head, tail, expected = (uint64_t)(uintptr_t)theirs ^ 0xB4BEu;
        memcpy(&head, theirs, sizeof head);
        memcpy(&tail, (char *)theirs + frame_bytes - sizeof tail, sizeof tail);
        if (head != expected || tail != expected)
            snprintf(stress->failure[self->index], 160, "frame %p changed while live", theirs);
        bare->free(theirs, frame_bytes, align_bytes);
    }
    return NULL;
}

static void run_bare_case(const stress_config *config, const ks_allocator_entry *entry, stress_tally *tally)
{
    if (entry->struct_bytes < offsetof(ks_allocator_entry, bare) + sizeof entry->bare || entry->bare == NULL)
        return;
    uint64_t start_ns = monotonic_ns();
    bare_stress *stress = calloc(1, sizeof *stress);
    if (stress == NULL) {
        report(tally, entry->name, "bare: frames freed on the other thread", 0, "out of memory");
        return;
    }
    stress->bare = entry->bare;
    stress->frame_bytes = config->framing.FrameSize;
    stress->ops = config->mt_ops;
    bare_stress_thread threads[2] = {{stress, 0}, {stress, 1}};
    pthread_t handles[2];
    for (unsigned index = 0; index < 2; index++)
        pthread_create(&handles[index], NULL, bare_stress_body, &threads[index]);
    for (unsigned index = 0; index < 2; index++)
        pthread_join(handles[index], NULL);
    for (unsigned t = 0; t < 2; t++)
        for (unsigned slot = 0; slot < BARE_QUEUE_SLOTS; slot++) {
            void *left = atomic_load(&stress->queue[t][slot]);
            if (left != NULL)
                stress->bare->free(left, stress->frame_bytes, 64);
        }
    const char *why = stress->failure[0][0] ? stress->failure[0] : stress->failure[1][0] ? stress->failure[1] : NULL;
    report(tally, entry->name, "bare: frames freed on the other thread", monotonic_ns() - start_ns, why);
    free(stress);
}

static void stress_allocator(const stress_config *config, const ks_allocator_entry *entry, stress_tally *tally)
{
    run_bare_case(config, entry, tally);
    if (entry->caps & KS_CAP_THREAD_SAFE) {
        for (unsigned p = 0; p < KS_MT_PROFILE_COUNT; p++)
            run_mt_case(config, entry, (ks_mt_profile)p, false, tally);
        run_mt_case(config, entry, KS_MT_PRODUCER_CONSUMER, true, tally);
    }
    for (unsigned p = 0; p < KS_PROFILE_COUNT; p++)
        run_st_case(config, entry, (ks_profile)p, tally);
}

static int usage(const char *program)
{
    fprintf(stderr,
            "usage: %s [--allocator NAME] [--threads N] [--ops N] [--smoke-ops N] [--churn N] [--seed N]\n"
            "  defaults: every allocator, 4 threads, 24000 ops per threaded case, 6000 per smoke profile,\n"
            "  threads replaced every 400 ops, seed 1\n",
            program);
    return 2;
}

/* Reads "--flag value" pairs; false on anything else. */
static bool parse_args(int argc, char **argv, stress_config *config)
{
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            return false;
        char *end = NULL;
        const char *flag = argv[i], *text = argv[i + 1];
        if (strcmp(flag, "--allocator") == 0) {
            config->only = text;
            continue;
        }
        unsigned long long value = strtoull(text, &end, 10);
        if (end == text || *end != '\0')
            return false;
        if (strcmp(flag, "--threads") == 0 && value >= 2 && value <= KS_MT_MAX_THREADS)
            config->threads = (unsigned)value;
        else if (strcmp(flag, "--ops") == 0 && value > 0)
            config->mt_ops = value;
        else if (strcmp(flag, "--smoke-ops") == 0 && value > 0)
            config->st_ops = value;
        else if (strcmp(flag, "--churn") == 0)
            config->churn_ops = value;
        else if (strcmp(flag, "--seed") == 0)
            config->seed = value;
        else
            return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    stress_config config = {.mt_ops = 24000, .st_ops = 6000, .threads = 4, .churn_ops = 400, .seed = 1};
    config.framing.Frames = 64;
    config.framing.FrameSize = 1024;
    config.framing.FileAlignment = FILE_64_BYTE_ALIGNMENT;
    config.framing.PoolType = NonPagedPool;
    if (!parse_args(argc, argv, &config))
        return usage(argv[0]);
    stress_tally tally = {0};
    if (config.only == NULL || strcmp(config.only, "frame_set") == 0)
        run_frame_set_case(&config, &tally);
    bool found = config.only == NULL || strcmp(config.only, "frame_set") == 0;
    for (size_t i = 0; i < ks_catalogue_count(); i++) {
        const ks_allocator_entry *entry = ks_catalogue_at(i);
        if (config.only != NULL && strcmp(config.only, entry->name) != 0)
            continue;
        found = true;
        stress_allocator(&config, entry, &tally);
    }
    if (!found) {
        fprintf(stderr, "%s: no allocator '%s' in the catalogue\n", argv[0], config.only);
        return 2;
    }
    printf("stress: %u passed, %u failed\n", tally.passed, tally.failed);
    return tally.failed ? 1 : 0;
}
