/*
 * main.c -- ksalloc-bench: the benchmark driver.
 *
 * Reads Google Benchmark's flags (every --benchmark_* flag works as it does for any Google
 * Benchmark binary) and its own, calibrates the timer, probes perf_event_open, loads plugins,
 * records in the report's context everything a reader needs to trust a figure (timer source and
 * cost, which counters exist, the build, every allocator and its capabilities, every skipped case
 * and why), registers the suites and runs them. `make bench` (bench/bench.mk) is the usual way
 * in: it adds the repetitions, the JSON report and the summary.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "catalogue.h"
#include "gbench_c.h"
#include "perf_counters.h"
#include "rss.h"
#include "suites.h"
#include "latency.h"
#include "timer.h"

#ifndef KS_BENCH_CFLAGS
#define KS_BENCH_CFLAGS "unknown"
#endif
#ifndef KS_BENCH_MODE
#define KS_BENCH_MODE "unknown"
#endif
#if defined(__clang__)
#define KS_BENCH_COMPILER "clang " __clang_version__
#else
#define KS_BENCH_COMPILER "gcc " __VERSION__
#endif

#define MAX_PLUGINS 16u
#define DEFAULT_LATENCY_OPS 50000u
#define QUICK_LATENCY_OPS 5000u
/* What the console shows of each result; the JSON report has every counter. */
#define CONSOLE_COUNTERS "items_per_second,lat_p50_ns,lat_p99_ns,lat_max_ns,blowup,allocation_failures_per_op"

static const char usage[] =
    "usage: ksalloc-bench [--benchmark_* flags] [options]\n"
    "Benchmarks every catalogued allocator (and plugins) against the inline free-list baseline.\n"
    "options:\n"
    "  --plugin=PATH          also benchmark the allocator in this shared object (repeatable)\n"
    "  --ks_allocators=A,B    only these catalogued allocators (default: all)\n"
    "  --ks_max_threads=N     threaded suites run 1, 2, 4, ... N threads (default: online CPUs)\n"
    "  --ks_latency_ops=N     operations per thread in each latency pass, batches and single ops (default 50000)\n"
    "  --ks_quick             the CI smoke suite: 4 KiB frames, 2 threads\n"
    "  --help                 this text, then Google Benchmark's flags (--benchmark_filter=REGEX,\n"
    "                         --benchmark_min_time=S, --benchmark_repetitions=N, --benchmark_out=FILE,\n"
    "                         --benchmark_context=k=v,...)\n";

typedef struct driver_options {
    const char *plugin_paths[MAX_PLUGINS];
    size_t plugin_count;
    const char *only_allocators; /* comma-separated, or NULL */
    unsigned max_threads;
    uint64_t latency_ops;
    bool quick;
} driver_options;

/* Parses and removes this driver's flags; leaves anything else for Google Benchmark to refuse. */
static int parse_options(int *argc, char **argv, driver_options *options)
{
    int kept = 1;
    for (int index = 1; index < *argc; index++) {
        const char *arg = argv[index];
        char *end = NULL;
        if (strncmp(arg, "--plugin=", 9) == 0 && options->plugin_count < MAX_PLUGINS) {
            options->plugin_paths[options->plugin_count++] = arg + 9;
        } else if (strcmp(arg, "--plugin") == 0 && index + 1 < *argc && options->plugin_count < MAX_PLUGINS) {
            options->plugin_paths[options->plugin_count++] = argv[++index];
        } else if (strncmp(arg, "--ks_allocators=", 16) == 0) {
            options->only_allocators = arg + 16;
        } else if (strncmp(arg, "--ks_max_threads=", 17) == 0) {
            unsigned long value = strtoul(arg + 17, &end, 10);
            if (*end != '\0' || value < 1 || value > KS_BENCH_MAX_THREADS) {
                fprintf(stderr, "ksalloc-bench: --ks_max_threads: '%s' is not a number from 1 to %u\n", arg + 17,
                        KS_BENCH_MAX_THREADS);
                return 2;
            }
            options->max_threads = (unsigned)value;
        } else if (strncmp(arg, "--ks_latency_ops=", 17) == 0) {
            unsigned long long value = strtoull(arg + 17, &end, 10);
            if (*end != '\0' || value < 1 || value > 100000000ull) {
                fprintf(stderr, "ksalloc-bench: --ks_latency_ops: '%s' is not a number from 1 to 100000000\n", arg + 17);
                return 2;
            }
            options->latency_ops = value;
        } else if (strcmp(arg, "--ks_quick") == 0) {
            options->quick = true;
        } else {
            argv[kept++] = argv[index];
        }
    }
    *argc = kept;
    argv[kept] = NULL;
    return -1;
}

/* Whether name is in the comma-separated list (NULL: every name is). */
static bool listed(const char *list, const char *name)
{
    if (list == NULL)
        return true;
    size_t length = strlen(name);
    for (const char *cursor = list; *cursor != '\0';) {
        const char *comma = strchr(cursor, ',');
        size_t item = comma ? (size_t)(comma - cursor) : strlen(cursor);
        if (item == length && strncmp(cursor, name, length) == 0)
            return true;
        cursor += item + (comma ? 1 : 0);
    }
    return false;
}

typedef struct driver {
    driver_options options;
    ks_bench_allocator allocators[64 + MAX_PLUGINS];
    size_t allocator_count;
    ks_plugin *plugins[MAX_PLUGINS];
    size_t plugin_count;
    ks_bench_config config;
    ks_bench_suites suites;
} driver;

/* The catalogue (or the chosen part of it), then each plugin as "plugin-<name>". */
static bool collect_allocators(driver *drv)
{
    size_t catalogue_count = ks_catalogue_count();
    for (size_t index = 0; index < catalogue_count && drv->allocator_count < 64; index++) {
        const ks_allocator_entry *entry = ks_catalogue_at(index);
        if (!listed(drv->options.only_allocators, entry->name))
            continue;
        ks_bench_allocator *allocator = &drv->allocators[drv->allocator_count++];
        allocator->entry = entry;
        snprintf(allocator->label, sizeof allocator->label, "%s", entry->name);
    }
    for (size_t index = 0; index < drv->options.plugin_count; index++) {
        ks_error err;
        ks_error_clear(&err);
        if (!NT_SUCCESS(ks_plugin_load(drv->options.plugin_paths[index], &drv->plugins[drv->plugin_count], &err))) {
            fprintf(stderr, "ksalloc-bench: --plugin=%s: %s\n", drv->options.plugin_paths[index], err.message);
            return false;
        }
        const ks_allocator_entry *entry = ks_plugin_entry(drv->plugins[drv->plugin_count++]);
        ks_bench_allocator *allocator = &drv->allocators[drv->allocator_count++];
        allocator->entry = entry;
        snprintf(allocator->label, sizeof allocator->label, "plugin-%s", entry->name);
        char key[128];
        snprintf(key, sizeof key, "ks_plugin.%s", allocator->label);
        ks_gbench_add_context(key, drv->options.plugin_paths[index]);
    }
    return true;
}

/* Every name in --ks_allocators must be in the catalogue: a typo would silently drop it. */
static bool check_allocator_names(const char *list)
{
    for (const char *cursor = list; cursor != NULL && *cursor != '\0';) {
        const char *comma = strchr(cursor, ',');
        char name[128];
        size_t length = comma ? (size_t)(comma - cursor) : strlen(cursor);
        snprintf(name, sizeof name, "%.*s", (int)(length < sizeof name ? length : sizeof name - 1), cursor);
        if (ks_catalogue_find(name) == NULL) {
            fprintf(stderr, "ksalloc-bench: --ks_allocators: '%s' is not in the catalogue; it has:", name);
            for (size_t index = 0; index < ks_catalogue_count(); index++)
                fprintf(stderr, " %s", ks_catalogue_at(index)->name);
            fputc('\n', stderr);
            return false;
        }
        cursor += length + (comma ? 1 : 0);
    }
    return true;
}

static void add_context_number(const char *key, double value)
{
    char text[64];
    snprintf(text, sizeof text, "%.2f", value);
    ks_gbench_add_context(key, text);
}

static void add_machine_context(void)
{
    char text[512];
    struct utsname name;
    if (uname(&name) == 0) {
        snprintf(text, sizeof text, "%s %s %s %s", name.sysname, name.release, name.version, name.machine);
        ks_gbench_add_context("ks_kernel", text);
    }
    FILE *cpuinfo = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (cpuinfo != NULL && fgets(line, sizeof line, cpuinfo) != NULL) {
        const char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
            snprintf(text, sizeof text, "%s", colon + 2);
            text[strcspn(text, "\n")] = '\0';
            ks_gbench_add_context("ks_cpu", text);
            break;
        }
    }
    if (cpuinfo != NULL)
        fclose(cpuinfo);
    ks_gbench_add_context("ks_build_compiler", KS_BENCH_COMPILER);
    ks_gbench_add_context("ks_build_cflags", KS_BENCH_CFLAGS);
    ks_gbench_add_context("ks_build_mode", KS_BENCH_MODE);
}

static void add_measurement_context(const driver *drv)
{
    char text[512];
    ks_gbench_add_context("ks_timer", ks_timer_state.source);
    add_context_number("ks_timer_cost_ns", ks_timer_state.cost_median_ns);
    add_context_number("ks_timer_cost_min_ns", ks_timer_state.cost_min_ns);
    add_context_number("ks_timer_resolution_ns", ks_timer_state.resolution_ns);
    add_context_number("ks_clock_gettime_cost_ns", ks_timer_state.clock_cost_ns);
    ks_gbench_add_context("ks_perf_hardware", ks_perf_describe(&drv->config.perf, true, text, sizeof text));
    ks_gbench_add_context("ks_perf_software", ks_perf_describe(&drv->config.perf, false, text, sizeof text));
    ks_gbench_add_context("ks_rss_peak_reset", drv->config.rss_peak_resettable
                                                   ? "yes: peak RSS is per benchmark run"
                                                   : "no (/proc/self/clear_refs refused): peak RSS is the process's");
    ks_gbench_add_context("ks_suite", drv->config.quick ? "quick" : "default");
    snprintf(text, sizeof text, "%u", drv->config.max_threads);
    ks_gbench_add_context("ks_max_threads", text);
    snprintf(text, sizeof text, "%llu", (unsigned long long)drv->config.latency_ops);
    ks_gbench_add_context("ks_latency_ops", text);
    snprintf(text, sizeof text, "%u", KSALLOC_ABI_VERSION);
    ks_gbench_add_context("ks_abi_version", text);
    ks_gbench_add_context("ks_baseline", "inline_freelist");
}

static void add_allocator_context(const driver *drv)
{
    char key[160], caps[128], text[512];
    for (size_t index = 0; index < drv->allocator_count; index++) {
        const ks_allocator_entry *entry = drv->allocators[index].entry;
        snprintf(key, sizeof key, "ks_allocator.%s", drv->allocators[index].label);
        snprintf(text, sizeof text, "caps=%s max_frame_bytes=%zu max_align_bytes=%zu: %s",
                 ks_caps_describe(entry->caps, caps, sizeof caps), entry->max_frame_bytes, entry->max_align_bytes,
                 entry->description);
        ks_gbench_add_context(key, text);
    }
}

/* Skips go into the report's context, which Google Benchmark also prints before the run. */
static void report_skips(const ks_bench_suites *suites)
{
    char key[192], count[32];
    for (size_t index = 0; index < suites->skip_count; index++) {
        snprintf(key, sizeof key, "ks_skip.%s", suites->skips[index].name);
        ks_gbench_add_context(key, suites->skips[index].reason);
    }
    snprintf(count, sizeof count, "%zu", suites->skip_count);
    ks_gbench_add_context("ks_skipped", count);
}

static void print_preface(const driver *drv)
{
    char hardware[256], software[256];
    printf("ksalloc-bench: %zu benchmarks over %zu allocators (+ inline_freelist, "
           "pool_direct); suite %s; %zu cases skipped, each listed below as ks_skip.<name>: <reason>\n",
           drv->suites.registered, drv->allocator_count, drv->config.quick ? "quick" : "default", drv->suites.skip_count);
    printf("timer: %s, %.1f ns per read (median; min %.1f, resolution %.1f), subtracted from every latency "
           "sample; body latencies are means of %u-op batches\n",
           ks_timer_state.source, ks_timer_state.cost_median_ns, ks_timer_state.cost_min_ns,
           ks_timer_state.resolution_ns, KS_LATENCY_BATCH_OPS);
    printf("perf: hardware: %s\n      software: %s\n", ks_perf_describe(&drv->config.perf, true, hardware, sizeof hardware),
           ks_perf_describe(&drv->config.perf, false, software, sizeof software));
    fflush(stdout);
}

static unsigned online_cpus(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < 1)
        return 1;
    return cpus > (long)KS_BENCH_MAX_THREADS ? KS_BENCH_MAX_THREADS : (unsigned)cpus;
}

static void configure(driver *drv)
{
    ks_bench_config *config = &drv->config;
    config->allocators = drv->allocators;
    config->allocator_count = drv->allocator_count;
    config->quick = drv->options.quick;
    config->max_threads = drv->options.max_threads ? drv->options.max_threads : online_cpus();
    config->latency_ops = drv->options.latency_ops ? drv->options.latency_ops
                                                   : config->quick ? QUICK_LATENCY_OPS : DEFAULT_LATENCY_OPS;
    ks_perf_probe(&config->perf);
    config->rss_peak_resettable = ks_rss_reset_peak();
}

int main(int argc, char **argv)
{
    static driver drv; /* large; static keeps it off the stack and zeroed */
    for (int index = 1; index < argc; index++) {
        if (strcmp(argv[index], "--help") == 0 || strcmp(argv[index], "-h") == 0) {
            fputs(usage, stdout);
            fputs("\nGoogle Benchmark's flags:\n", stdout);
            fflush(stdout);
            char *help_argv[] = {argv[0], (char *)"--help", NULL};
            int help_argc = 2;
            ks_gbench_initialize(&help_argc, help_argv); /* prints its flags and exits */
            return 0;
        }
    }
    ks_gbench_initialize(&argc, argv);
    int exit_code = parse_options(&argc, argv, &drv.options);
    if (exit_code >= 0)
        return exit_code;
    if (ks_gbench_report_unrecognized(argc, argv)) {
        fputs(usage, stderr);
        return 2;
    }
    if (!check_allocator_names(drv.options.only_allocators))
        return 2;
    ks_timer_calibrate();
    if (!collect_allocators(&drv))
        return 3;
    configure(&drv);
    add_machine_context();
    add_measurement_context(&drv);
    add_allocator_context(&drv);
    ks_error err;
    if (!NT_SUCCESS(ks_bench_register_suites(&drv.config, &drv.suites, &err))) {
        fprintf(stderr, "ksalloc-bench: %s\n", err.message);
        return 3;
    }
    report_skips(&drv.suites);
    print_preface(&drv);
    ks_gbench_run(CONSOLE_COUNTERS);
    ks_gbench_shutdown();
    ks_bench_suites_release(&drv.suites);
    for (size_t index = 0; index < drv.plugin_count; index++)
        ks_plugin_unload(drv.plugins[index]);
    return 0;
}
