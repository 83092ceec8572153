/*
 * cmd_run.c -- `ksalloc run`: one allocator (built-in or plugin), one or every profile, through
 * the verifier unless --no-verify. Runs are deterministic for a seed, so on a fault the command
 * prints the exact line that reproduces it with a trace recorded for `ksalloc replay`. The
 * multi-threaded profiles (private, producer-consumer, all-to-all) go to the threaded runner
 * (mt.h) with --threads N; their op choices are deterministic per thread, their interleaving is
 * not, so their reproducer line has no trace.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "mt.h"
#include "trace.h"

static const char usage[] =
    "usage: ksalloc run (--allocator NAME | --plugin PATH) [options]\n"
    "  --allocator NAME       a catalogue name (`ksalloc list`) or plugin:PATH\n"
    "  --plugin PATH          load the allocator from a shared object (see README)\n"
    "  --profile NAME         lifo, fifo, random (default), burst, fragmenting; private,\n"
    "                         producer-consumer, all-to-all (multi-threaded); or all (every\n"
    "                         single-thread one, plus the three threaded ones when --threads > 1)\n"
    "  --threads N            threads for the multi-threaded profiles (default 1; > 1 needs a\n"
    "                         KS_CAP_THREAD_SAFE allocator)\n"
    "  --thread-churn N       each thread exits after N ops and a new one takes over its frames\n"
    "  --fan-out              producer-consumer: one producer feeding N - 1 consumers (default:\n"
    "                         N/2 producer -> consumer pairs)\n"
    "  --instances N          allocator instances the threads are spread over (default 1)\n"
    "  --frames N             Frames of the framing (default 64; 0 = no requirement)\n"
    "  --frame-bytes N        FrameSize in bytes, K/M suffix allowed (default 4096; 0 = no requirement)\n"
    "  --align BYTES          frame alignment, a power of two (default 64)\n"
    "  --must-allocate        set KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE (capacity promised)\n"
    "  --ops N                ops per profile (default 100000)\n"
    "  --seed N               generator seed (default 1)\n"
    "  --trace-out FILE       record the run as a trace (one profile only)\n"
    "  --no-verify            run the allocator bare (for timing; no checks)\n"
    "  --self-check-every N   call the allocator's self-check every N ops (default 0: at delete)\n"
    "  --keep-live            leave frames live at the end (the verifier reports them as leaks)\n"
    "  --keep-going           do not stop at the first fault\n"
    "  --max-faults N         faults printed (default 10)\n" KS_CLI_ISOLATION_USAGE;

typedef struct run_options {
    const char *allocator;
    const char *profile;
    KSALLOCATOR_FRAMING framing;
    uint64_t ops;
    uint64_t seed;
    const char *trace_out;
    bool verify;
    bool keep_live;
    bool keep_going;
    uint64_t self_check_every;
    uint64_t max_faults;
    uint64_t threads;
    uint64_t churn_ops;
    uint64_t instances;
    bool fan_out;
    char plugin_spec[KS_ALLOCATOR_NAME_BYTES];
} run_options;

/* Returns -1 when parsing succeeded, else the exit code. */
static int parse_run_options(int argc, char **argv, run_options *opts)
{
    enum { O_ALLOCATOR = 1, O_PLUGIN, O_PROFILE, O_FRAMES, O_FRAME_BYTES, O_ALIGN, O_MUST, O_OPS, O_SEED,
           O_TRACE, O_NO_VERIFY, O_SELF_CHECK, O_KEEP_LIVE, O_KEEP_GOING, O_MAX_FAULTS, O_THREADS, O_CHURN,
           O_FAN_OUT, O_INSTANCES, O_HELP };
    static const struct option options[] = {
        {"allocator", required_argument, NULL, O_ALLOCATOR}, {"plugin", required_argument, NULL, O_PLUGIN},
        {"profile", required_argument, NULL, O_PROFILE}, {"frames", required_argument, NULL, O_FRAMES},
        {"frame-bytes", required_argument, NULL, O_FRAME_BYTES}, {"align", required_argument, NULL, O_ALIGN},
        {"must-allocate", no_argument, NULL, O_MUST}, {"ops", required_argument, NULL, O_OPS},
        {"seed", required_argument, NULL, O_SEED}, {"trace-out", required_argument, NULL, O_TRACE},
        {"no-verify", no_argument, NULL, O_NO_VERIFY}, {"self-check-every", required_argument, NULL, O_SELF_CHECK},
        {"keep-live", no_argument, NULL, O_KEEP_LIVE}, {"keep-going", no_argument, NULL, O_KEEP_GOING},
        {"max-faults", required_argument, NULL, O_MAX_FAULTS}, {"threads", required_argument, NULL, O_THREADS},
        {"thread-churn", required_argument, NULL, O_CHURN}, {"fan-out", no_argument, NULL, O_FAN_OUT},
        {"instances", required_argument, NULL, O_INSTANCES}, {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0}};
    uint64_t value = 0;
    opterr = 0;
    optind = 1;
    for (int opt; (opt = getopt_long(argc, argv, ":", options, NULL)) != -1;) {
        switch (opt) {
        case O_ALLOCATOR: opts->allocator = optarg; break;
        case O_PLUGIN:
            if (!ks_cli_plugin_spec("run", optarg, opts->plugin_spec, sizeof opts->plugin_spec)) return KS_EXIT_USAGE;
            opts->allocator = opts->plugin_spec;
            break;
        case O_PROFILE: opts->profile = optarg; break;
        case O_FRAMES:
            if (!ks_cli_parse_u64("run", "--frames", optarg, UINT32_MAX, &value)) return KS_EXIT_USAGE;
            opts->framing.Frames = (ULONG)value;
            break;
        case O_FRAME_BYTES:
            if (!ks_cli_parse_bytes("run", "--frame-bytes", optarg, UINT32_MAX, &value)) return KS_EXIT_USAGE;
            opts->framing.FrameSize = (ULONG)value;
            break;
        case O_ALIGN:
            if (!ks_cli_parse_align("run", optarg, &opts->framing.FileAlignment)) return KS_EXIT_USAGE;
            break;
        case O_MUST: opts->framing.RequirementsFlags |= KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE; break;
        case O_OPS:
            if (!ks_cli_parse_u64("run", "--ops", optarg, UINT32_MAX, &opts->ops)) return KS_EXIT_USAGE;
            break;
        case O_SEED:
            if (!ks_cli_parse_u64("run", "--seed", optarg, UINT64_MAX, &opts->seed)) return KS_EXIT_USAGE;
            break;
        case O_TRACE: opts->trace_out = optarg; break;
        case O_NO_VERIFY: opts->verify = false; break;
        case O_SELF_CHECK:
            if (!ks_cli_parse_u64("run", "--self-check-every", optarg, UINT32_MAX, &opts->self_check_every))
                return KS_EXIT_USAGE;
            break;
        case O_KEEP_LIVE: opts->keep_live = true; break;
        case O_KEEP_GOING: opts->keep_going = true; break;
        case O_MAX_FAULTS:
            if (!ks_cli_parse_u64("run", "--max-faults", optarg, UINT32_MAX, &opts->max_faults))
                return KS_EXIT_USAGE;
            break;
        case O_THREADS:
            if (!ks_cli_parse_u64("run", "--threads", optarg, KS_MT_MAX_THREADS, &opts->threads)) return KS_EXIT_USAGE;
            if (opts->threads == 0) return ks_cli_usage_error("run", usage, "--threads: must be at least 1");
            break;
        case O_CHURN:
            if (!ks_cli_parse_u64("run", "--thread-churn", optarg, UINT32_MAX, &opts->churn_ops)) return KS_EXIT_USAGE;
            break;
        case O_FAN_OUT: opts->fan_out = true; break;
        case O_INSTANCES:
            if (!ks_cli_parse_u64("run", "--instances", optarg, KS_MT_MAX_INSTANCES, &opts->instances))
                return KS_EXIT_USAGE;
            if (opts->instances == 0) return ks_cli_usage_error("run", usage, "--instances: must be at least 1");
            break;
        case O_HELP: fputs(usage, stdout); return KS_EXIT_CLEAN;
        case ':': return ks_cli_usage_error("run", usage, "%s needs a value", argv[optind - 1]);
        default: return ks_cli_usage_error("run", usage, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return ks_cli_usage_error("run", usage, "unexpected argument '%s'", argv[optind]);
    if (opts->allocator == NULL)
        return ks_cli_usage_error("run", usage, "name an allocator with --allocator or --plugin");
    bool all = strcmp(opts->profile, "all") == 0;
    ks_mt_profile mt_profile = ks_mt_profile_from_name(opts->profile);
    bool threaded = mt_profile != KS_MT_PROFILE_COUNT;
    if (!all && !threaded && ks_profile_from_name(opts->profile) == KS_PROFILE_COUNT)
        return ks_cli_usage_error("run", usage, "--profile: unknown profile '%s'", opts->profile);
    if (all && opts->trace_out)
        return ks_cli_usage_error("run", usage, "--trace-out records one profile: name one, not 'all'");
    if (!all && !threaded && (opts->threads > 1 || opts->churn_ops || opts->fan_out || opts->instances > 1))
        return ks_cli_usage_error("run", usage,
                                  "--threads, --thread-churn, --fan-out and --instances apply to the multi-threaded "
                                  "profiles (private, producer-consumer, all-to-all), not to '%s'", opts->profile);
    if (threaded && opts->threads < ks_mt_profile_min_threads(mt_profile))
        return ks_cli_usage_error("run", usage, "--profile %s needs --threads >= %u", opts->profile,
                                  ks_mt_profile_min_threads(mt_profile));
    if ((threaded || (all && opts->threads > 1)) && (opts->trace_out || opts->keep_live))
        return ks_cli_usage_error("run", usage, "--trace-out and --keep-live record or keep one thread's frames: "
                                  "not with the multi-threaded profile '%s'", opts->profile);
    if (!opts->verify && (opts->keep_live || opts->self_check_every))
        return ks_cli_usage_error("run", usage, "--keep-live and --self-check-every need the verifier");
    return -1;
}

/* The command line that reproduces this run, with a trace recorded. */
static void print_reproducer(const run_options *opts, ks_profile profile)
{
    fprintf(stderr, "reproduce: ksalloc run --allocator %s --profile %s --frames %" PRIu32 " --frame-bytes %" PRIu32
                    " --align %" PRIu64 "%s --ops %" PRIu64 " --seed %" PRIu64 "%s --trace-out fault.trace\n",
            opts->allocator, ks_profile_name(profile), (uint32_t)opts->framing.Frames,
            (uint32_t)opts->framing.FrameSize, (uint64_t)opts->framing.FileAlignment + 1,
            (opts->framing.RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) ? " --must-allocate" : "",
            opts->ops, opts->seed, opts->keep_live ? " --keep-live" : "");
    if (opts->trace_out)
        fprintf(stderr, "replay:    ksalloc replay %s\n", opts->trace_out);
}

/* Runs one profile; returns an exit code. */
static int run_profile(const run_options *opts, const ks_allocator_entry *entry, ks_profile profile)
{
    ks_error err;
    ks_error_clear(&err);
    ks_workload_config config;
    if (!NT_SUCCESS(ks_profile_config(profile, entry, opts->allocator, &opts->framing, &config, &err))) {
        fprintf(stderr, "ksalloc run: %s\n", err.message);
        return KS_EXIT_ERROR;
    }
    ks_cli_fault_printer printer = {.max_printed = opts->max_faults};
    ks_verifier *verifier = NULL;
    ks_verifier_options vopts = {.self_check_every_ops = (uint32_t)opts->self_check_every,
                                 .on_fault = ks_cli_print_fault, .on_fault_arg = &printer,
                                 .probe_frames = true};
    ks_trace_writer *trace = NULL;
    ks_engine *engine = NULL;
    int exit_code = KS_EXIT_ERROR;
    if (opts->verify && !NT_SUCCESS(ks_verifier_create(&vopts, &verifier, &err)))
        goto out;
    if (opts->trace_out &&
        !NT_SUCCESS(ks_trace_writer_open(opts->trace_out, &config, ks_profile_name(profile), opts->seed, &trace, &err)))
        goto out;
    ks_engine_options eopts = {.verifier = verifier, .trace = trace, .keep_live_at_close = opts->keep_live,
                               .watch = ks_cli_watch()};
    if (!NT_SUCCESS(ks_engine_open(&config, &eopts, &engine, &err)))
        goto out;
    NTSTATUS status = ks_engine_run_profile(engine, profile, opts->seed, opts->ops, !opts->keep_going, &err);
    ks_run_stats stats = *ks_engine_stats(engine);
    ks_error close_err;
    ks_error_clear(&close_err);
    NTSTATUS close_status = ks_engine_close(engine, &close_err);
    engine = NULL;
    if (!NT_SUCCESS(status))
        goto out;
    if (!NT_SUCCESS(close_status)) {
        err = close_err;
        goto out;
    }
    if (trace) {
        NTSTATUS trace_status = ks_trace_writer_close(trace, &err);
        trace = NULL;
        if (!NT_SUCCESS(trace_status))
            goto out;
    }
    uint64_t faults = verifier ? ks_verifier_fault_count(verifier) : 0;
    char label[KS_ALLOCATOR_NAME_BYTES + 64];
    snprintf(label, sizeof label, "run allocator=%s profile=%s seed=%" PRIu64 "%s", opts->allocator,
             ks_profile_name(profile), opts->seed, verifier ? "" : " verify=off");
    ks_cli_print_summary(label, &stats, faults);
    if (faults > printer.max_printed)
        fprintf(stderr, "(%" PRIu64 " more faults not printed)\n", faults - printer.max_printed);
    if (faults)
        print_reproducer(opts, profile);
    exit_code = faults ? KS_EXIT_FAULT : KS_EXIT_CLEAN;
out:
    if (exit_code == KS_EXIT_ERROR)
        fprintf(stderr, "ksalloc run: %s\n", err.message);
    /* The run stopped on the allocator's fault: the verifier's, or STATUS_INVALID_HANDLE, the
     * engine stopping a pin whose InitializeAllocator succeeded with *Context left NULL. */
    if (exit_code == KS_EXIT_ERROR &&
        ((verifier != NULL && ks_verifier_fault_count(verifier) > 0) || err.status == STATUS_INVALID_HANDLE)) {
        print_reproducer(opts, profile);
        exit_code = KS_EXIT_FAULT;
    }
    if (engine)
        ks_engine_close(engine, NULL);
    if (trace)
        ks_trace_writer_close(trace, NULL);
    if (verifier)
        ks_verifier_destroy(verifier);
    return exit_code;
}

/* The command line that reproduces a threaded run's op choices (not its interleaving). */
static void print_mt_reproducer(const run_options *opts, ks_mt_profile profile)
{
    fprintf(stderr, "reproduce: ksalloc run --allocator %s --profile %s --threads %" PRIu64 " --frames %" PRIu32
                    " --frame-bytes %" PRIu32 " --align %" PRIu64 "%s --ops %" PRIu64 " --seed %" PRIu64,
            opts->allocator, ks_mt_profile_name(profile), opts->threads, (uint32_t)opts->framing.Frames,
            (uint32_t)opts->framing.FrameSize, (uint64_t)opts->framing.FileAlignment + 1,
            (opts->framing.RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) ? " --must-allocate" : "",
            opts->ops, opts->seed);
    if (opts->churn_ops)
        fprintf(stderr, " --thread-churn %" PRIu64, opts->churn_ops);
    if (opts->instances > 1)
        fprintf(stderr, " --instances %" PRIu64, opts->instances);
    fprintf(stderr, "%s  (thread interleaving differs between runs)\n", opts->fan_out ? " --fan-out" : "");
}

/* Runs one multi-threaded profile through the threaded runner; returns an exit code. */
static int run_mt_profile(const run_options *opts, const ks_allocator_entry *entry, ks_mt_profile profile)
{
    ks_error err;
    ks_error_clear(&err);
    ks_cli_fault_printer printer = {.max_printed = opts->max_faults};
    ks_verifier_options vopts = {.self_check_every_ops = (uint32_t)opts->self_check_every,
                                 .on_fault = ks_cli_print_fault, .on_fault_arg = &printer,
                                 .probe_frames = true};
    ks_mt_options mopts = {.entry = entry, .framing = opts->framing, .profile = profile,
                           .threads = (unsigned)opts->threads, .instances = (unsigned)opts->instances,
                           .ops = opts->ops, .seed = opts->seed, .churn_ops = opts->churn_ops,
                           .fan_out = opts->fan_out, .stop_at_fault = !opts->keep_going,
                           .watch = ks_cli_watch()};
    if (opts->verify && !NT_SUCCESS(ks_verifier_create(&vopts, &mopts.verifier, &err))) {
        fprintf(stderr, "ksalloc run: %s\n", err.message);
        return KS_EXIT_ERROR;
    }
    ks_mt_stats *stats = calloc(1, sizeof *stats);
    NTSTATUS status = stats ? ks_mt_run(&mopts, stats, &err)
                            : ks_error_set(&err, STATUS_INSUFFICIENT_RESOURCES, "out of memory");
    int exit_code = KS_EXIT_ERROR;
    if (NT_SUCCESS(status)) {
        uint64_t faults = mopts.verifier ? ks_verifier_fault_count(mopts.verifier) : 0;
        char label[KS_ALLOCATOR_NAME_BYTES + 96];
        snprintf(label, sizeof label, "run allocator=%s profile=%s threads=%" PRIu64 " seed=%" PRIu64 "%s",
                 opts->allocator, ks_mt_profile_name(profile), opts->threads, opts->seed,
                 mopts.verifier ? "" : " verify=off");
        ks_cli_print_summary(label, &stats->total, faults);
        double seconds = (double)stats->total.elapsed_ns / 1e9;
        printf("  threads: started=%" PRIu64 " handoffs=%" PRIu64 " handoffs_per_s=%.0f frees_per_s=%.0f\n",
               stats->threads_started, stats->handoffs, seconds > 0 ? (double)stats->handoffs / seconds : 0.0,
               seconds > 0 ? (double)stats->total.frees / seconds : 0.0);
        if (faults > printer.max_printed)
            fprintf(stderr, "(%" PRIu64 " more faults not printed)\n", faults - printer.max_printed);
        if (faults)
            print_mt_reproducer(opts, profile);
        exit_code = faults ? KS_EXIT_FAULT : KS_EXIT_CLEAN;
    } else {
        fprintf(stderr, "ksalloc run: %s\n", err.message);
    }
    free(stats);
    if (mopts.verifier)
        ks_verifier_destroy(mopts.verifier);
    return exit_code;
}

/* Refuses --threads on an allocator that cannot take it before anything runs. */
static int check_threads(const run_options *opts, const ks_allocator_entry *entry)
{
    if (opts->threads <= 1)
        return -1;
    ks_mt_options check = {.entry = entry, .profile = KS_MT_PRIVATE, .threads = (unsigned)opts->threads,
                           .instances = (unsigned)opts->instances};
    ks_error err;
    ks_error_clear(&err);
    if (NT_SUCCESS(ks_mt_check(&check, &err)))
        return -1;
    fprintf(stderr, "ksalloc run: %s\n", err.message);
    return KS_EXIT_USAGE;
}

int ks_cmd_run(int argc, char **argv)
{
    run_options opts = {.profile = "random", .ops = 100000, .seed = 1, .verify = true, .max_faults = 10,
                        .threads = 1, .instances = 1};
    opts.framing.Frames = 64;
    opts.framing.FrameSize = 4096;
    opts.framing.FileAlignment = FILE_64_BYTE_ALIGNMENT;
    opts.framing.PoolType = NonPagedPool;
    int parsed = parse_run_options(argc, argv, &opts);
    if (parsed >= 0)
        return parsed;

    const ks_allocator_entry *entry = NULL;
    ks_plugin *plugin = NULL;
    ks_error err;
    ks_error_clear(&err);
    if (!NT_SUCCESS(ks_cli_resolve_watched(opts.allocator, 0, &entry, &plugin, &err))) {
        fprintf(stderr, "ksalloc run: %s\n", err.message);
        return ks_cli_resolve_exit_code(opts.allocator, &err);
    }
    int refused = check_threads(&opts, entry);
    int worst = refused >= 0 ? refused : KS_EXIT_CLEAN;
    bool all = strcmp(opts.profile, "all") == 0;
    /* The single-thread profiles, then the three threaded ones. */
    for (int p = 0; refused < 0 && p < KS_PROFILE_COUNT + KS_MT_PROFILE_COUNT; p++) {
        ks_mt_profile mt_profile = (ks_mt_profile)(p - KS_PROFILE_COUNT);
        bool wanted = p < KS_PROFILE_COUNT
                          ? all || (ks_profile)p == ks_profile_from_name(opts.profile)
                          : (all && opts.threads > 1) || mt_profile == ks_mt_profile_from_name(opts.profile);
        if (!wanted)
            continue;
        int code = p < KS_PROFILE_COUNT ? run_profile(&opts, entry, (ks_profile)p)
                                        : run_mt_profile(&opts, entry, mt_profile);
        if (code == KS_EXIT_ERROR || (code == KS_EXIT_FAULT && worst == KS_EXIT_CLEAN))
            worst = code;
        if (code == KS_EXIT_ERROR || (code == KS_EXIT_FAULT && !opts.keep_going))
            break;
    }
    if (plugin)
        ks_plugin_unload(plugin);
    return worst;
}
