/*
 * cmd_dma.c -- `ksalloc dma`: the streaming DMA profiles (capture, render, loopback) over one
 * allocator and one emulated device (harness/dma/), through the verifier unless --no-verify.
 *
 * The device is described by --device (the ks_dma_options_parse syntax, "mask=32,coherent=0,...")
 * and by shorthand flags appended after it, so a flag overrides the same key in --device. Any
 * allocator runs: a KS_CAP_DMA one hands out frames its device can reach, any other one has each
 * frame mapped with ks_dma_map_single for the op (bounced when beyond the mask and there is no
 * IOMMU). The summary adds the device's counters to the run's. Exit 1 for a finding: a verifier
 * fault, a data mismatch (stale data), a device fault that was not injected, or a DMA-debug
 * report, during the run or at teardown. Injected faults (--fault-rate) are counted and are not
 * findings: the device reports them and the run goes on; a checker report next to them is one.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dma/dma.h"
#include "trace.h"

#define DMA_SPEC_BYTES KS_DMA_OPTIONS_BYTES
#define DMA_DEFAULT_DEVICE "mask=32"

static const char usage[] =
    "usage: ksalloc dma [options]\n"
    "  --allocator NAME       a catalogue name (default dma_common); non-DMA allocators' frames are\n"
    "                         mapped for each op with dma_map_single\n"
    "  --profile NAME         capture, render, loopback or all (default all)\n"
    "  --device SPEC          device options, e.g. mask=32,coherent=0,iommu=1,sg=1,fault_ppm=1000\n"
    "                         (default " DMA_DEFAULT_DEVICE "; keys in README.md and harness/dma/dma.h)\n"
    "  --mask BITS            DMA address width, 24 to 64 (same as mask= in --device)\n"
    "  --coherent             the device snoops CPU caches (the default)\n"
    "  --non-coherent         it does not: every sync matters\n"
    "  --iommu                translate through an IOMMU\n"
    "  --sg                   scatter/gather device\n"
    "  --fault-rate PPM       injected faults per million descriptors (counted, not findings)\n"
    "  --no-sync              plant a driver bug: skip the syncs on DMA frames (stale data shows\n"
    "                         on a non-coherent device with streaming frames, e.g. dma_sg)\n"
    "  --frames N             Frames of the framing (default 16)\n"
    "  --frame-bytes N        FrameSize in bytes, K/M suffix allowed (default 64K)\n"
    "  --align BYTES          frame alignment, a power of two (default 4096: DMA buffers are\n"
    "                         page-aligned, so a streaming mapping owns its pages)\n"
    "  --ops N                ops per profile (default 20000)\n"
    "  --seed N               generator and device seed (default 1)\n"
    "  --trace-out FILE       record the run as a trace (one profile only)\n"
    "  --no-verify            run the allocator bare\n" KS_CLI_ISOLATION_USAGE;

typedef struct dma_cli_options {
    const char *allocator;
    const char *profile;
    char device[DMA_SPEC_BYTES];
    KSALLOCATOR_FRAMING framing;
    uint64_t ops;
    uint64_t seed;
    const char *trace_out;
    bool verify;
    bool no_sync;
} dma_cli_options;

/* Appends ",item" (or "item") to the device spec; false when it no longer fits. */
static bool spec_append(dma_cli_options *opts, const char *item)
{
    size_t used = strlen(opts->device);
    int written = snprintf(opts->device + used, sizeof opts->device - used, "%s%s", used ? "," : "", item);
    return written >= 0 && (size_t)written < sizeof opts->device - used;
}

static int spec_append_flag(dma_cli_options *opts, const char *item)
{
    if (spec_append(opts, item))
        return -1;
    return ks_cli_usage_error("dma", usage, "device options longer than %zu bytes", sizeof opts->device - 1);
}

/* Shorthand flags that become device keys; returns -1 when handled well, else an exit code. */
static int parse_device_flag(dma_cli_options *opts, int opt_index, const char *arg)
{
    char item[64];
    /* A flag is spelled as its --device key and checked by the DMA layer's parser with the whole
     * spec (check_device_spec), so the two accept exactly the same values. */
    if (arg != NULL && (strchr(arg, ',') != NULL || strchr(arg, '=') != NULL || strlen(arg) >= 40))
        return ks_cli_usage_error("dma", usage, "'%s' is not one value (no ',' or '=', under 40 characters)", arg);
    switch (opt_index) {
    case 0:
        snprintf(item, sizeof item, "mask=%s", arg);
        return spec_append_flag(opts, item);
    case 1: return spec_append_flag(opts, "coherent=1");
    case 2: return spec_append_flag(opts, "coherent=0");
    case 3: return spec_append_flag(opts, "iommu=1");
    case 4: return spec_append_flag(opts, "sg=1");
    default:
        snprintf(item, sizeof item, "fault_ppm=%s", arg);
        return spec_append_flag(opts, item);
    }
}

/* Checks the assembled spec with the DMA layer's own parser, so a bad key is a usage error. */
static int check_device_spec(dma_cli_options *opts)
{
    char seeded[DMA_SPEC_BYTES];
    if (strstr(opts->device, "seed=") == NULL) {
        snprintf(seeded, sizeof seeded, "seed=%" PRIu64, opts->seed);
        if (!spec_append(opts, seeded))
            return ks_cli_usage_error("dma", usage, "device options longer than %zu bytes", sizeof opts->device - 1);
    }
    ks_dma_options options;
    ks_dma_options_init(&options);
    ks_error err;
    ks_error_clear(&err);
    if (!NT_SUCCESS(ks_dma_options_parse(&options, opts->device, &err)))
        return ks_cli_usage_error("dma", usage, "--device: %s", err.message);
    return -1;
}

static int parse_dma_options(int argc, char **argv, dma_cli_options *opts)
{
    enum { O_MASK = 1, O_COHERENT, O_NON_COHERENT, O_IOMMU, O_SG, O_FAULT_RATE, O_ALLOCATOR, O_PROFILE, O_DEVICE,
           O_NO_SYNC, O_FRAMES, O_FRAME_BYTES, O_ALIGN, O_OPS, O_SEED, O_TRACE, O_NO_VERIFY, O_HELP };
    static const struct option options[] = {
        {"mask", required_argument, NULL, O_MASK}, {"coherent", no_argument, NULL, O_COHERENT},
        {"non-coherent", no_argument, NULL, O_NON_COHERENT}, {"iommu", no_argument, NULL, O_IOMMU},
        {"sg", no_argument, NULL, O_SG}, {"fault-rate", required_argument, NULL, O_FAULT_RATE},
        {"allocator", required_argument, NULL, O_ALLOCATOR}, {"profile", required_argument, NULL, O_PROFILE},
        {"device", required_argument, NULL, O_DEVICE}, {"no-sync", no_argument, NULL, O_NO_SYNC},
        {"frames", required_argument, NULL, O_FRAMES}, {"frame-bytes", required_argument, NULL, O_FRAME_BYTES},
        {"align", required_argument, NULL, O_ALIGN},
        {"ops", required_argument, NULL, O_OPS}, {"seed", required_argument, NULL, O_SEED},
        {"trace-out", required_argument, NULL, O_TRACE}, {"no-verify", no_argument, NULL, O_NO_VERIFY},
        {"help", no_argument, NULL, O_HELP}, {NULL, 0, NULL, 0}};
    dma_cli_options flag_opts = {.device = ""}; /* shorthand flags go after --device, wherever given */
    uint64_t value = 0;
    int code = -1;
    opterr = 0;
    optind = 1;
    for (int opt; code < 0 && (opt = getopt_long(argc, argv, ":", options, NULL)) != -1;) {
        switch (opt) {
        case O_MASK: case O_COHERENT: case O_NON_COHERENT: case O_IOMMU: case O_SG: case O_FAULT_RATE:
            code = parse_device_flag(&flag_opts, opt - O_MASK, optarg);
            break;
        case O_ALLOCATOR: opts->allocator = optarg; break;
        case O_PROFILE: opts->profile = optarg; break;
        case O_DEVICE:
            if (snprintf(opts->device, sizeof opts->device, "%s", optarg) >= (int)sizeof opts->device)
                code = ks_cli_usage_error("dma", usage, "--device: longer than %zu bytes", sizeof opts->device - 1);
            break;
        case O_NO_SYNC: opts->no_sync = true; break;
        case O_FRAMES:
            if (!ks_cli_parse_u64("dma", "--frames", optarg, UINT32_MAX, &value)) return KS_EXIT_USAGE;
            opts->framing.Frames = (ULONG)value;
            break;
        case O_FRAME_BYTES:
            if (!ks_cli_parse_bytes("dma", "--frame-bytes", optarg, UINT32_MAX, &value)) return KS_EXIT_USAGE;
            opts->framing.FrameSize = (ULONG)value;
            break;
        case O_ALIGN:
            if (!ks_cli_parse_align("dma", optarg, &opts->framing.FileAlignment)) return KS_EXIT_USAGE;
            break;
        case O_OPS:
            if (!ks_cli_parse_u64("dma", "--ops", optarg, UINT32_MAX, &opts->ops)) return KS_EXIT_USAGE;
            break;
        case O_SEED:
            if (!ks_cli_parse_u64("dma", "--seed", optarg, UINT64_MAX, &opts->seed)) return KS_EXIT_USAGE;
            break;
        case O_TRACE: opts->trace_out = optarg; break;
        case O_NO_VERIFY: opts->verify = false; break;
        case O_HELP: fputs(usage, stdout); return KS_EXIT_CLEAN;
        case ':': return ks_cli_usage_error("dma", usage, "%s needs a value", argv[optind - 1]);
        default: return ks_cli_usage_error("dma", usage, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (code >= 0)
        return code;
    if (optind < argc)
        return ks_cli_usage_error("dma", usage, "unexpected argument '%s'", argv[optind]);
    if (flag_opts.device[0] != '\0' && !spec_append(opts, flag_opts.device))
        return ks_cli_usage_error("dma", usage, "device options longer than %zu bytes", sizeof opts->device - 1);
    bool all = strcmp(opts->profile, "all") == 0;
    ks_profile profile = ks_profile_from_name(opts->profile);
    if (!all && (profile == KS_PROFILE_COUNT || !ks_profile_uses_dma(profile)))
        return ks_cli_usage_error("dma", usage, "--profile: '%s' is not capture, render, loopback or all",
                                  opts->profile);
    if (all && opts->trace_out)
        return ks_cli_usage_error("dma", usage, "--trace-out records one profile: name one, not 'all'");
    return check_device_spec(opts);
}

/* The device's counters, read before the engine (and its device) goes. */
typedef struct dma_counters {
    ks_dma_device_stats device;
    ks_dma_adapter_stats adapter;
    uint64_t device_faults;
    uint64_t reports;
} dma_counters;

static void read_counters(ks_engine *engine, dma_counters *counters)
{
    memset(counters, 0, sizeof *counters);
    ks_dma_device *device = ks_engine_dma_device(engine);
    if (device == NULL)
        return;
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    ks_dma_device_get_stats(device, &counters->device);
    ks_dma_adapter_get_stats(adapter, &counters->adapter);
    counters->device_faults = ks_dma_device_fault_count(device);
    counters->reports = ks_dma_report_count(adapter);
}

static void print_dma_summary(const dma_cli_options *opts, ks_profile profile, const ks_run_stats *stats,
                              const dma_counters *counters, uint64_t faults)
{
    char label[KS_ALLOCATOR_NAME_BYTES + DMA_SPEC_BYTES + 64];
    snprintf(label, sizeof label, "dma allocator=%s profile=%s device=%s seed=%" PRIu64 "%s%s", opts->allocator,
             ks_profile_name(profile), opts->device, opts->seed, opts->verify ? "" : " verify=off",
             opts->no_sync ? " no-sync" : "");
    ks_cli_print_summary(label, stats, faults);
    printf("  dma: ops=%" PRIu64 " bytes_moved=%" PRIu64 " descriptors=%" PRIu64 " maps=%" PRIu64 " bounced=%" PRIu64
           " syncs=%" PRIu64 " faults_injected=%" PRIu64 " device_faults=%" PRIu64 " checker_reports=%" PRIu64 "\n",
           stats->dma_ops, counters->device.bytes_transferred, counters->device.completed,
           counters->adapter.maps_single + counters->adapter.maps_sg + counters->adapter.coherent_allocs,
           counters->adapter.bounced_mappings, counters->adapter.syncs, stats->dma_injected_faults,
           counters->device_faults, counters->reports);
}

static void print_reproducer(const dma_cli_options *opts, ks_profile profile)
{
    fprintf(stderr,
            "reproduce: ksalloc dma --allocator %s --profile %s --device %s --frames %" PRIu32 " --frame-bytes %" PRIu32
            " --align %" PRIu64 " --ops %" PRIu64 " --seed %" PRIu64 "%s%s --trace-out fault.trace\n",
            opts->allocator, ks_profile_name(profile), opts->device, (uint32_t)opts->framing.Frames,
            (uint32_t)opts->framing.FrameSize, (uint64_t)opts->framing.FileAlignment + 1, opts->ops, opts->seed, opts->no_sync ? " --no-sync" : "",
            opts->verify ? "" : " --no-verify");
}

/* A DMA finding (stale data, a device fault, a checker report) is exit 1; anything else stops. */
static int exit_code_of(NTSTATUS status)
{
    return status == STATUS_DATA_ERROR || status == STATUS_UNSUCCESSFUL ? KS_EXIT_FAULT : KS_EXIT_ERROR;
}

typedef struct dma_run {
    ks_cli_fault_printer printer;
    ks_verifier *verifier;
    ks_trace_writer *trace;
    ks_engine *engine;
    ks_error err;
} dma_run;

static NTSTATUS dma_run_open(const dma_cli_options *opts, const ks_allocator_entry *entry, ks_profile profile,
                             dma_run *run)
{
    ks_workload_config config;
    NTSTATUS status = ks_profile_config(profile, entry, opts->allocator, &opts->framing, &config, &run->err);
    if (!NT_SUCCESS(status))
        return status;
    snprintf(config.dma_options, sizeof config.dma_options, "%s", opts->device);
    ks_verifier_options vopts = {.on_fault = ks_cli_print_fault, .on_fault_arg = &run->printer,
                                 .probe_frames = true};
    if (opts->verify && !NT_SUCCESS(status = ks_verifier_create(&vopts, &run->verifier, &run->err)))
        return status;
    if (opts->trace_out && !NT_SUCCESS(status = ks_trace_writer_open(opts->trace_out, &config, ks_profile_name(profile),
                                                                      opts->seed, &run->trace, &run->err)))
        return status;
    ks_engine_options eopts = {.verifier = run->verifier, .trace = run->trace, .watch = ks_cli_watch(),
                               .dma_transfer_flags = opts->no_sync ? KS_DMA_TRANSFER_NO_SYNC : 0};
    return ks_engine_open(&config, &eopts, &run->engine, &run->err);
}

static void dma_run_release(dma_run *run)
{
    if (run->engine)
        ks_engine_close(run->engine, NULL);
    if (run->trace)
        ks_trace_writer_close(run->trace, NULL);
    if (run->verifier)
        ks_verifier_destroy(run->verifier);
}

/* Runs one profile; returns an exit code. */
static int run_dma_profile(const dma_cli_options *opts, const ks_allocator_entry *entry, ks_profile profile)
{
    dma_run run = {.printer = {.max_printed = 10}};
    ks_error_clear(&run.err);
    NTSTATUS status = dma_run_open(opts, entry, profile, &run);
    if (!NT_SUCCESS(status)) {
        fprintf(stderr, "ksalloc dma: %s\n", run.err.message);
        /* A DMA allocator refuses a device it cannot serve; dma_sg's frames are scattered pages,
         * which only a scatter/gather device or an IOMMU can take. */
        if (status == STATUS_NOT_SUPPORTED && (entry->caps & KS_CAP_DMA) != 0)
            fprintf(stderr, "ksalloc dma: hint: '%s' refused the device '%s'%s\n", entry->name, opts->device,
                    strcmp(entry->name, "dma_sg") == 0 ? ": dma_sg needs --sg or --iommu"
                                                       : " (see `ksalloc list` and README.md, DMA)");
        dma_run_release(&run);
        return KS_EXIT_ERROR;
    }
    status = ks_engine_run_profile(run.engine, profile, opts->seed, opts->ops, true, &run.err);
    ks_run_stats stats = *ks_engine_stats(run.engine);
    dma_counters counters;
    read_counters(run.engine, &counters);
    ks_error close_err;
    ks_error_clear(&close_err);
    NTSTATUS close_status = ks_engine_close(run.engine, &close_err);
    run.engine = NULL;
    if (NT_SUCCESS(status) && !NT_SUCCESS(close_status)) {
        status = close_status;
        run.err = close_err;
        counters.reports++; /* at least the teardown report that failed the close */
    }
    if (NT_SUCCESS(status) && run.trace != NULL) {
        status = ks_trace_writer_close(run.trace, &run.err);
        run.trace = NULL;
    }
    uint64_t faults = run.verifier ? ks_verifier_fault_count(run.verifier) : 0;
    int exit_code = NT_SUCCESS(status) ? (faults ? KS_EXIT_FAULT : KS_EXIT_CLEAN) : exit_code_of(status);
    if (!NT_SUCCESS(status))
        fprintf(stderr, "ksalloc dma: %s\n", run.err.message);
    if (exit_code != KS_EXIT_ERROR)
        print_dma_summary(opts, profile, &stats, &counters, faults);
    if (exit_code == KS_EXIT_FAULT)
        print_reproducer(opts, profile);
    dma_run_release(&run);
    return exit_code;
}

int ks_cmd_dma(int argc, char **argv)
{
    dma_cli_options opts = {.allocator = "dma_common", .profile = "all", .device = DMA_DEFAULT_DEVICE,
                            .ops = 20000, .seed = 1, .verify = true};
    opts.framing.PoolType = NonPagedPool;
    opts.framing.Frames = 16;
    opts.framing.FrameSize = 64u << 10;
    opts.framing.FileAlignment = 4095;
    int code = parse_dma_options(argc, argv, &opts);
    if (code >= 0)
        return code;
    const ks_allocator_entry *entry = ks_catalogue_find(opts.allocator);
    if (entry == NULL) {
        fprintf(stderr, "ksalloc dma: unknown allocator '%s' (see `ksalloc list`)\n", opts.allocator);
        return KS_EXIT_USAGE;
    }
    int worst = KS_EXIT_CLEAN;
    bool all = strcmp(opts.profile, "all") == 0;
    for (int p = 0; p < KS_PROFILE_COUNT && worst != KS_EXIT_ERROR; p++) {
        if (!ks_profile_uses_dma((ks_profile)p) || (!all && (ks_profile)p != ks_profile_from_name(opts.profile)))
            continue;
        int result = run_dma_profile(&opts, entry, (ks_profile)p);
        worst = result > worst ? result : worst;
    }
    return worst;
}
