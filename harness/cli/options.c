/*
 * options.c -- number parsing and reporting shared by the subcommands. Flag values are parsed
 * strictly (the whole string, in range, no sign) because a silently truncated "--frames 64x"
 * would make a run that does not reproduce what the user asked for.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

bool ks_cli_parse_u64(const char *cmd, const char *flag, const char *text, uint64_t max, uint64_t *value)
{
    char *end = NULL;
    errno = 0;
    if (text == NULL || text[0] == '\0' || text[0] == '-' || text[0] == '+' || text[0] == ' ') {
        fprintf(stderr, "ksalloc %s: %s: '%s' is not a non-negative number\n", cmd, flag, text ? text : "");
        return false;
    }
    unsigned long long parsed = strtoull(text, &end, 0);
    if (errno != 0 || end == text || *end != '\0') {
        fprintf(stderr, "ksalloc %s: %s: '%s' is not a number\n", cmd, flag, text);
        return false;
    }
    if (parsed > max) {
        fprintf(stderr, "ksalloc %s: %s: %s is over the limit of %" PRIu64 "\n", cmd, flag, text, max);
        return false;
    }
    *value = parsed;
    return true;
}

bool ks_cli_parse_bytes(const char *cmd, const char *flag, const char *text, uint64_t max, uint64_t *value)
{
    char number[64];
    size_t length = text ? strlen(text) : 0;
    uint64_t scale = 1;
    if (length > 0 && length < sizeof number) {
        switch (text[length - 1]) {
        case 'K': case 'k': scale = 1ull << 10; break;
        case 'M': case 'm': scale = 1ull << 20; break;
        case 'G': case 'g': scale = 1ull << 30; break;
        default: break;
        }
    }
    if (scale == 1 || length >= sizeof number)
        return ks_cli_parse_u64(cmd, flag, text, max, value);
    memcpy(number, text, length - 1);
    number[length - 1] = '\0';
    uint64_t units = 0;
    if (!ks_cli_parse_u64(cmd, flag, number, UINT64_MAX / scale, &units))
        return false;
    if (units * scale > max) { /* the limit in bytes, not in the suffix's units ("4 is over 3") */
        fprintf(stderr, "ksalloc %s: %s: '%s' is %" PRIu64 " bytes, over the limit of %" PRIu64 " bytes\n", cmd, flag,
                text, units * scale, max);
        return false;
    }
    *value = units * scale;
    return true;
}

bool ks_cli_parse_align(const char *cmd, const char *text, ULONG *mask)
{
    uint64_t value = 0;
    if (!ks_cli_parse_bytes(cmd, "--align", text, 1u << 30, &value))
        return false;
    if (value == 0 || (value & (value - 1)) != 0) {
        fprintf(stderr, "ksalloc %s: --align: %s is not a power of two\n", cmd, text);
        return false;
    }
    *mask = (ULONG)(value - 1);
    return true;
}

bool ks_cli_plugin_spec(const char *cmd, const char *path, char *spec, size_t spec_bytes)
{
    if (path[0] == '\0') {
        fprintf(stderr, "ksalloc %s: --plugin: the path is empty: name a shared object (PATH.so)\n", cmd);
        return false;
    }
    if (snprintf(spec, spec_bytes, "plugin:%s", path) >= (int)spec_bytes) {
        fprintf(stderr, "ksalloc %s: --plugin: path longer than %zu bytes\n", cmd, spec_bytes - 8);
        return false;
    }
    return true;
}

int ks_cli_usage_error(const char *cmd, const char *usage, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "ksalloc %s: ", cmd);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    fputs(usage, stderr);
    return KS_EXIT_USAGE;
}

void ks_cli_print_fault(void *printer_arg, const ks_fault *fault)
{
    ks_cli_fault_printer *printer = printer_arg;
    if (printer->printed++ < printer->max_printed)
        fprintf(stderr, "FAULT %s\n", fault->message);
}

void ks_cli_print_summary(const char *label, const ks_run_stats *stats, uint64_t faults)
{
    double ns_per_op = stats->ops ? (double)stats->elapsed_ns / (double)stats->ops : 0.0;
    printf("%s ops=%" PRIu64 " allocations=%" PRIu64 " null=%" PRIu64 " frees=%" PRIu64 " touches=%" PRIu64
           " peak_live=%" PRIu64 " faults=%" PRIu64 " elapsed_ms=%.3f ns_per_op=%.1f\n",
           label, stats->ops, stats->allocations, stats->allocation_failures, stats->frees, stats->touches,
           stats->peak_live, faults, (double)stats->elapsed_ns / 1e6, ns_per_op);
}
