/*
 * cmd_replay.c -- `ksalloc replay FILE`: re-runs a recorded trace op by op through the verifier.
 * The allocator each pin names in the trace is used unless --allocator/--plugin overrides it for
 * every pin, which is how a trace recorded on one allocator is tried on another. An ALLOCATE
 * whose outcome differs from the recorded one is reported as a divergence (the run goes on);
 * an op the state cannot take any more (a FREE past the live frames) stops the replay.
 *
 * `--fuzz-input FILE --allocator NAME` replays a fuzz input instead (a crash a fuzz target saved):
 * the bytes are decoded exactly as fuzz/fuzz_helpers.c decodes them (ks_decode_config for one
 * allocator, then ks_decode_op until the bytes run out) and run through the verifier with the
 * fuzzers' self-check cadence. Any bytes decode to a valid run, so this path cannot fail on its
 * input; only the allocator can.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "trace.h"

/* A fuzz input larger than this is not one a fuzzer wrote (their max_len is a few KiB). */
#define REPLAY_FUZZ_INPUT_MAX_BYTES ((size_t)64 << 20)

static const char usage[] =
    "usage: ksalloc replay FILE [options]\n"
    "       ksalloc replay --fuzz-input FILE --allocator NAME [options]\n"
    "  --fuzz-input FILE  FILE is a fuzz target's input (a saved crash), not a trace\n"
    "  --allocator NAME   replay every pin on this allocator (catalogue name or plugin:PATH)\n"
    "  --plugin PATH      replay every pin on this plugin\n"
    "  --no-verify        replay bare (no checks)\n"
    "  --keep-going       do not stop at the first fault\n"
    "  --max-faults N     faults printed (default 10)\n"
    "A trace that names a plugin is replayed only with --plugin (or --allocator plugin:PATH) given:\n"
    "a file never makes ksalloc load code.\n" KS_CLI_ISOLATION_USAGE;

typedef struct replay_options {
    const char *path;
    const char *fuzz_input;
    const char *allocator;
    bool verify;
    bool keep_going;
    uint64_t max_faults;
    char plugin_spec[KS_ALLOCATOR_NAME_BYTES];
} replay_options;

static int parse_replay_options(int argc, char **argv, replay_options *opts)
{
    enum { O_ALLOCATOR = 1, O_PLUGIN, O_NO_VERIFY, O_KEEP_GOING, O_MAX_FAULTS, O_FUZZ_INPUT, O_HELP };
    static const struct option options[] = {
        {"allocator", required_argument, NULL, O_ALLOCATOR}, {"plugin", required_argument, NULL, O_PLUGIN},
        {"no-verify", no_argument, NULL, O_NO_VERIFY}, {"keep-going", no_argument, NULL, O_KEEP_GOING},
        {"max-faults", required_argument, NULL, O_MAX_FAULTS}, {"fuzz-input", required_argument, NULL, O_FUZZ_INPUT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0}};
    opterr = 0;
    optind = 1;
    for (int opt; (opt = getopt_long(argc, argv, ":", options, NULL)) != -1;) {
        switch (opt) {
        case O_ALLOCATOR: opts->allocator = optarg; break;
        case O_PLUGIN:
            if (!ks_cli_plugin_spec("replay", optarg, opts->plugin_spec, sizeof opts->plugin_spec)) return KS_EXIT_USAGE;
            opts->allocator = opts->plugin_spec;
            break;
        case O_NO_VERIFY: opts->verify = false; break;
        case O_KEEP_GOING: opts->keep_going = true; break;
        case O_MAX_FAULTS:
            if (!ks_cli_parse_u64("replay", "--max-faults", optarg, UINT32_MAX, &opts->max_faults))
                return KS_EXIT_USAGE;
            break;
        case O_FUZZ_INPUT: opts->fuzz_input = optarg; break;
        case O_HELP: fputs(usage, stdout); return KS_EXIT_CLEAN;
        case ':': return ks_cli_usage_error("replay", usage, "%s needs a value", argv[optind - 1]);
        default: return ks_cli_usage_error("replay", usage, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (opts->fuzz_input != NULL) {
        if (optind < argc)
            return ks_cli_usage_error("replay", usage, "unexpected argument '%s' with --fuzz-input", argv[optind]);
        if (opts->allocator == NULL)
            return ks_cli_usage_error("replay", usage, "--fuzz-input needs --allocator NAME or --plugin PATH");
        opts->path = opts->fuzz_input;
        return -1;
    }
    if (optind == argc)
        return ks_cli_usage_error("replay", usage, "name the trace FILE to replay");
    if (optind + 1 < argc)
        return ks_cli_usage_error("replay", usage, "unexpected argument '%s'", argv[optind + 1]);
    opts->path = argv[optind];
    return -1;
}

/* A pin of the trace that names a plugin, when nothing on the command line does: replay loads
 * no code a file names (a trace attached to a bug report could name any shared object). */
static int refuse_trace_plugins(const ks_workload_config *config, const char *override, const char *path)
{
    if (override != NULL)
        return -1;
    for (unsigned i = 0; i < config->pin_count; i++) {
        if (strncmp(config->pins[i].allocator, "plugin:", 7) != 0)
            continue;
        fprintf(stderr,
                "ksalloc replay: %s: pin %u names the plugin '%s'; replay loads no code that a trace names. To "
                "replay it on that plugin, name it on the command line: ksalloc replay %s --plugin %s\n",
                path, i, config->pins[i].allocator + 7, path, config->pins[i].allocator + 7);
        return KS_EXIT_USAGE;
    }
    return -1;
}

/* Resolves every pin's allocator; plugins loaded are kept in plugins[] for the caller to unload. */
static NTSTATUS resolve_pins(ks_workload_config *config, const char *override, ks_plugin **plugins, ks_error *err)
{
    for (unsigned i = 0; i < config->pin_count; i++) {
        ks_pin_config *pin = &config->pins[i];
        if (override)
            snprintf(pin->allocator, sizeof pin->allocator, "%s", override);
        for (unsigned j = 0; j < i; j++)
            if (strcmp(config->pins[j].allocator, pin->allocator) == 0)
                pin->entry = config->pins[j].entry;
        if (pin->entry == NULL) {
            NTSTATUS status = ks_cli_resolve_watched(pin->allocator, i, &pin->entry, &plugins[i], err);
            if (!NT_SUCCESS(status))
                return status;
        }
    }
    return STATUS_SUCCESS;
}

/* Steps every op; returns the number of divergences or -1 on an engine error (in err). */
static int64_t replay_ops(ks_engine *engine, const ks_trace *trace, ks_verifier *verifier, bool keep_going,
                          ks_error *err)
{
    int64_t divergences = 0;
    for (size_t i = 0; i < trace->op_count; i++) {
        bool allocated = false;
        if (!NT_SUCCESS(ks_engine_step(engine, &trace->ops[i], &allocated, err))) {
            char where[300];
            ks_trace_op_where(trace, i, where, sizeof where);
            ks_error_prefix(err, "%s: op %zu", where, i);
            return -1;
        }
        if (trace->ops[i].kind == KS_OP_ALLOCATE && allocated != (trace->allocated[i] != 0)) {
            if (divergences++ < 10)
                fprintf(stderr, "divergence: op %zu: ALLOCATE on pin %u %s, the trace recorded %s\n", i,
                        trace->ops[i].pin, allocated ? "got a frame" : "returned NULL",
                        trace->allocated[i] ? "a frame" : "NULL");
        }
        if (verifier && !keep_going && ks_verifier_fault_count(verifier) > 0)
            break;
    }
    return divergences;
}

/* Reads the whole of path into a buffer the caller frees. */
static NTSTATUS read_fuzz_input(const char *path, uint8_t **data, size_t *size_bytes, ks_error *err)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return ks_error_set(err, STATUS_OBJECT_NAME_NOT_FOUND, "cannot open: %s", strerror(errno));
    size_t capacity = 4096, used = 0;
    uint8_t *buffer = malloc(capacity);
    while (buffer != NULL && used <= REPLAY_FUZZ_INPUT_MAX_BYTES) {
        used += fread(buffer + used, 1, capacity - used, file);
        if (used < capacity)
            break;
        uint8_t *grown = realloc(buffer, capacity * 2);
        if (grown == NULL)
            free(buffer);
        buffer = grown;
        capacity *= 2;
    }
    NTSTATUS status = STATUS_SUCCESS;
    if (buffer == NULL)
        status = ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "out of memory reading the input");
    else if (ferror(file))
        status = ks_error_set(err, STATUS_END_OF_FILE, "read error: %s", strerror(errno));
    else if (used > REPLAY_FUZZ_INPUT_MAX_BYTES)
        status = ks_error_set(err, STATUS_INVALID_PARAMETER, "larger than %zu bytes: not a fuzz input",
                              REPLAY_FUZZ_INPUT_MAX_BYTES);
    fclose(file);
    if (!NT_SUCCESS(status)) {
        free(buffer);
        return status;
    }
    *data = buffer;
    *size_bytes = used;
    return STATUS_SUCCESS;
}

/* Decodes and steps ops until the input is used up (or the first fault unless keep_going). */
static NTSTATUS run_fuzz_ops(ks_engine *engine, ks_byte_reader *reader, ks_verifier *verifier, bool keep_going,
                             ks_error *err)
{
    ks_live_view view;
    ks_op op;
    ks_engine_view(engine, &view);
    for (uint64_t index = 0; ks_decode_op(reader, &view, &op); index++) {
        NTSTATUS status = ks_engine_step(engine, &op, NULL, err);
        if (!NT_SUCCESS(status)) {
            ks_error_prefix(err, "op %" PRIu64, index);
            return status;
        }
        if (verifier && !keep_going && ks_verifier_fault_count(verifier) > 0)
            break;
        ks_engine_view(engine, &view);
    }
    return STATUS_SUCCESS;
}

/* Opens the decoded config; an allocator refusing its framing is reported and ends the replay
 * cleanly, as the fuzz targets skip such inputs. Returns an exit code, or -1 when opened. */
static int open_fuzz_engine(const ks_workload_config *config, ks_verifier *verifier, ks_engine **engine,
                            ks_error *err)
{
    ks_engine_options eopts = {.verifier = verifier, .watch = ks_cli_watch()};
    if (NT_SUCCESS(ks_engine_open(config, &eopts, engine, err)))
        return -1;
    if (strncmp(err->message, "engine:", 7) == 0)
        return KS_EXIT_ERROR;
    fprintf(stderr, "ksalloc replay: %s (the fuzz targets skip such inputs)\n", err->message);
    return KS_EXIT_CLEAN;
}

static int replay_fuzz_input(const replay_options *opts)
{
    ks_error err;
    ks_error_clear(&err);
    uint8_t *data = NULL;
    size_t size_bytes = 0;
    const ks_allocator_entry *entry = NULL;
    ks_plugin *plugin = NULL;
    ks_verifier *verifier = NULL;
    ks_engine *engine = NULL;
    ks_cli_fault_printer printer = {.max_printed = opts->max_faults};
    ks_verifier_options vopts = {.self_check_every_ops = KS_FUZZ_SELF_CHECK_EVERY_OPS,
                                 .on_fault = ks_cli_print_fault, .on_fault_arg = &printer,
                                 .probe_frames = true};
    int exit_code = KS_EXIT_ERROR;
    if (!NT_SUCCESS(read_fuzz_input(opts->path, &data, &size_bytes, &err)))
        goto out;
    if (!NT_SUCCESS(ks_cli_resolve_watched(opts->allocator, 0, &entry, &plugin, &err))) {
        exit_code = ks_cli_resolve_exit_code(opts->allocator, &err);
        if (exit_code != KS_EXIT_ERROR) /* else printed at out */
            fprintf(stderr, "ksalloc replay: %s\n", err.message);
        goto out;
    }
    if (opts->verify && !NT_SUCCESS(ks_verifier_create(&vopts, &verifier, &err)))
        goto out;
    ks_allocator_entry capped = *entry;
    if (capped.max_frame_bytes == 0 || capped.max_frame_bytes > KS_FUZZ_MAX_FRAME_BYTES)
        capped.max_frame_bytes = KS_FUZZ_MAX_FRAME_BYTES;
    const ks_allocator_entry *const entries[] = {&capped};
    ks_byte_reader reader = {.data = data, .size_bytes = size_bytes, .offset = 0};
    ks_workload_config config;
    ks_decode_config(&reader, entries, 1, &config);
    ks_decode_fit_heaps(&config, size_bytes - reader.offset);
    exit_code = open_fuzz_engine(&config, verifier, &engine, &err);
    if (exit_code >= 0)
        goto out;
    exit_code = KS_EXIT_ERROR;
    NTSTATUS status = run_fuzz_ops(engine, &reader, verifier, opts->keep_going, &err);
    ks_run_stats stats = *ks_engine_stats(engine);
    NTSTATUS close_status = ks_engine_close(engine, NT_SUCCESS(status) ? &err : NULL);
    engine = NULL;
    if (!NT_SUCCESS(status) || !NT_SUCCESS(close_status))
        goto out;
    uint64_t faults = verifier ? ks_verifier_fault_count(verifier) : 0;
    char label[512];
    snprintf(label, sizeof label, "replay fuzz-input=%s allocator=%s bytes=%zu", opts->path, entry->name, size_bytes);
    ks_cli_print_summary(label, &stats, faults);
    exit_code = faults ? KS_EXIT_FAULT : KS_EXIT_CLEAN;
out:
    if (exit_code == KS_EXIT_ERROR)
        fprintf(stderr, "ksalloc replay: %s: %s\n", opts->path, err.message);
    if (engine)
        ks_engine_close(engine, NULL);
    if (verifier)
        ks_verifier_destroy(verifier);
    ks_plugin_unload(plugin);
    free(data);
    return exit_code;
}

int ks_cmd_replay(int argc, char **argv)
{
    replay_options opts = {.verify = true, .max_faults = 10};
    int parsed = parse_replay_options(argc, argv, &opts);
    if (parsed >= 0)
        return parsed;
    if (opts.fuzz_input != NULL)
        return replay_fuzz_input(&opts);

    ks_error err;
    ks_error_clear(&err);
    ks_trace trace;
    memset(&trace, 0, sizeof trace);
    if (!NT_SUCCESS(ks_trace_load(opts.path, &trace, &err))) {
        fprintf(stderr, "ksalloc replay: %s\n", err.message);
        return KS_EXIT_ERROR;
    }
    int refused = refuse_trace_plugins(&trace.config, opts.allocator, opts.path);
    if (refused >= 0) {
        ks_trace_release(&trace);
        return refused;
    }
    ks_plugin *plugins[KS_MAX_PINS] = {NULL};
    ks_cli_fault_printer printer = {.max_printed = opts.max_faults};
    ks_verifier_options vopts = {.on_fault = ks_cli_print_fault, .on_fault_arg = &printer,
                                 .probe_frames = true};
    ks_verifier *verifier = NULL;
    ks_engine *engine = NULL;
    int exit_code = KS_EXIT_ERROR;
    int64_t divergences = 0;
    if (!NT_SUCCESS(resolve_pins(&trace.config, opts.allocator, plugins, &err))) {
        if (opts.allocator != NULL && ks_cli_resolve_exit_code(opts.allocator, &err) == KS_EXIT_USAGE) {
            fprintf(stderr, "ksalloc replay: %s\n", err.message);
            exit_code = KS_EXIT_USAGE; /* --allocator named nothing in the catalogue */
        }
        goto out;
    }
    if (opts.verify && !NT_SUCCESS(ks_verifier_create(&vopts, &verifier, &err)))
        goto out;
    ks_engine_options eopts = {.verifier = verifier, .watch = ks_cli_watch()};
    if (!NT_SUCCESS(ks_engine_open(&trace.config, &eopts, &engine, &err)))
        goto out;
    divergences = replay_ops(engine, &trace, verifier, opts.keep_going, &err);
    ks_run_stats stats = *ks_engine_stats(engine);
    NTSTATUS close_status = ks_engine_close(engine, divergences < 0 ? NULL : &err);
    engine = NULL;
    if (divergences < 0 || !NT_SUCCESS(close_status))
        goto out;
    uint64_t faults = verifier ? ks_verifier_fault_count(verifier) : 0;
    char label[512];
    snprintf(label, sizeof label, "replay file=%s profile=%s seed=%" PRIu64 " divergences=%" PRId64, opts.path,
             trace.profile, trace.seed, divergences);
    ks_cli_print_summary(label, &stats, faults);
    /* On the allocator it was recorded on, a replay that does not reproduce the recording is a
     * finding (the allocator is not deterministic for its input); on another one (--allocator,
     * --plugin) a different outcome is what is being looked at. */
    bool diverged = divergences > 0 && opts.allocator == NULL;
    if (diverged)
        fprintf(stderr, "ksalloc replay: %" PRId64 " ALLOCATE outcome(s) differ from the recording on the allocator it "
                        "was recorded on\n", divergences);
    exit_code = faults || diverged ? KS_EXIT_FAULT : KS_EXIT_CLEAN;
out:
    if (exit_code == KS_EXIT_ERROR && strncmp(err.message, opts.path, strlen(opts.path)) != 0)
        ks_error_prefix(&err, "%s", opts.path); /* an op's error already starts with file:line */
    if (exit_code == KS_EXIT_ERROR)
        fprintf(stderr, "ksalloc replay: %s\n", err.message);
    if (exit_code == KS_EXIT_ERROR && verifier != NULL && ks_verifier_fault_count(verifier) > 0)
        exit_code = KS_EXIT_FAULT; /* the replay stopped on the allocator's fault */
    if (engine)
        ks_engine_close(engine, NULL);
    if (verifier)
        ks_verifier_destroy(verifier);
    for (unsigned i = 0; i < KS_MAX_PINS; i++)
        if (plugins[i])
            ks_plugin_unload(plugins[i]);
    ks_trace_release(&trace);
    return exit_code;
}
