/*
 * mt_stress.c -- the multi-threaded stress, built in MODE=tsan (tests/stress/stress.mk).
 *
 * A standalone program, not a Criterion test: Criterion's runner cannot start under TSan
 * (Snaipe/Criterion#274). For every catalogued allocator with KS_CAP_THREAD_SAFE it runs the
 * three multi-threaded profiles (private, producer-consumer, all-to-all) through one verifier
 * session per case, with threads exiting and being replaced during the run (thread churn), so
 * frames allocated by a thread that has exited are freed by another and per-thread caches are
 * torn down while their frames are still live elsewhere. For EVERY catalogued allocator it then
 * runs a single-thread conformance smoke: each single-thread profile through the verifier.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

static void stress_allocator(const stress_config *config, const ks_allocator_entry *entry, stress_tally *tally)
{
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
    bool found = config.only == NULL;
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
