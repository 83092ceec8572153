/*
 * options.c -- ks_dma_options: defaults, the "key=value,..." parser the CLI and tests use, and a
 * one-line description for reports. A table maps each key to a setter, so the parser, its error
 * message listing the keys, and the documentation in dma.h stay one list.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dma_internal.h"

#define SPEC_ITEM_BYTES 128u

void ks_dma_options_init(ks_dma_options *options)
{
    memset(options, 0, sizeof *options);
    options->device.address_bits = 64;
    options->device.coherent = true;
    options->seed = 1;
}

static bool parse_u64(const char *text, uint64_t *value)
{
    if (*text == '\0' || *text == '-')
        return false;
    char *end;
    errno = 0;
    unsigned long long parsed = strtoull(text, &end, 0);
    if (errno != 0 || *end != '\0')
        return false;
    *value = parsed;
    return true;
}

/* A number with an optional binary suffix K, M, G, T (and an optional trailing "/s" for rates). */
static bool parse_size(const char *text, uint64_t *value)
{
    char digits[SPEC_ITEM_BYTES];
    size_t length = strlen(text);
    if (length >= sizeof digits || length == 0)
        return false;
    memcpy(digits, text, length + 1u);
    if (length > 2 && strcmp(digits + length - 2, "/s") == 0)
        digits[length -= 2] = '\0';
    unsigned shift = 0;
    switch (length > 0 ? digits[length - 1] : '\0') {
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    case 't': case 'T': shift = 40; break;
    default: break;
    }
    if (shift != 0)
        digits[length - 1] = '\0';
    uint64_t number;
    if (!parse_u64(digits, &number) || (shift != 0 && number > (UINT64_MAX >> shift)))
        return false;
    *value = number << shift;
    return true;
}

static bool parse_bool(const char *text, bool *value)
{
    static const char *const truths[] = {"1", "yes", "on", "true"};
    static const char *const lies[] = {"0", "no", "off", "false"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(text, truths[i]) == 0)
            return (*value = true), true;
        if (strcasecmp(text, lies[i]) == 0)
            return (*value = false), true;
    }
    return false;
}

static bool parse_faults(const char *text, unsigned *kinds)
{
    if (strcmp(text, "all") == 0)
        return (*kinds = KS_DMA_FAULT_ALL), true;
    if (strcmp(text, "none") == 0)
        return (*kinds = 0), true;
    unsigned parsed = 0;
    char copy[SPEC_ITEM_BYTES];
    snprintf(copy, sizeof copy, "%s", text);
    char *saveptr = NULL;
    for (char *word = strtok_r(copy, "+", &saveptr); word != NULL; word = strtok_r(NULL, "+", &saveptr)) {
        if (strcmp(word, "device") == 0)
            parsed |= KS_DMA_FAULT_DEVICE_ERROR;
        else if (strcmp(word, "iommu") == 0)
            parsed |= KS_DMA_FAULT_IOMMU;
        else if (strcmp(word, "stall") == 0)
            parsed |= KS_DMA_FAULT_STALL;
        else
            return false;
    }
    *kinds = parsed;
    return parsed != 0;
}

/* ---- the key table ------------------------------------------------------------------------- */

typedef enum value_type {
    VALUE_BITS,
    VALUE_BOOL,
    VALUE_NOT_BOOL,
    VALUE_SIZE,
    VALUE_U32,
    VALUE_PERCENT,
    VALUE_PPM,
    VALUE_FAULTS
} value_type;

#define DMA_MIN_ADDRESS_BITS 24u /* ISA's 24-bit DMA, the narrowest mask Linux drivers set */
#define DMA_MAX_ADDRESS_BITS 64u
#define DMA_MAX_PPM 1000000u

/* What a value of each type must be, for the error that refuses one (the CLI's flags are
 * spelled into these keys, so a flag and its key accept exactly the same values). */
static const char *const value_expected[] = {
    [VALUE_BITS] = "an address width in bits, 24 to 64",
    [VALUE_BOOL] = "1/0, yes/no, on/off or true/false",
    [VALUE_NOT_BOOL] = "1/0, yes/no, on/off or true/false",
    [VALUE_SIZE] = "a number, optionally with K, M, G or T (binary), up to 2^64 - 1",
    [VALUE_U32] = "a number, optionally with K, M, G (binary), up to 4294967295",
    [VALUE_PERCENT] = "a percentage, 0 to 100",
    [VALUE_PPM] = "a rate in parts per million, 0 to 1000000",
    [VALUE_FAULTS] = "all, none, or kinds joined by +: device, iommu, stall",
};

typedef struct option_key {
    const char *name;
    value_type type;
    size_t offset; /* into ks_dma_options */
} option_key;

#define KEY(name, type, field) {name, type, offsetof(ks_dma_options, field)}

static const option_key keys[] = {
    KEY("mask", VALUE_BITS, device.address_bits),
    KEY("coherent_mask", VALUE_BITS, device.coherent_address_bits),
    KEY("coherent", VALUE_BOOL, device.coherent),
    KEY("sg", VALUE_BOOL, device.scatter_gather),
    KEY("max_seg", VALUE_SIZE, device.max_segment_bytes),
    KEY("max_segs", VALUE_U32, device.max_segments),
    KEY("align", VALUE_U32, device.align_bytes),
    KEY("boundary", VALUE_SIZE, device.boundary_bytes),
    KEY("iommu", VALUE_BOOL, iommu),
    KEY("bounce", VALUE_NOT_BOOL, no_bounce),
    KEY("bounce_pool", VALUE_SIZE, bounce_pool_bytes),
    KEY("high", VALUE_PERCENT, high_memory_percent),
    KEY("high_boundary", VALUE_SIZE, high_boundary_bytes),
    KEY("phys_top", VALUE_SIZE, phys_top_bytes),
    KEY("ring", VALUE_U32, ring_entries),
    KEY("latency_ns", VALUE_SIZE, latency_ns),
    KEY("bandwidth", VALUE_SIZE, bandwidth_bytes_per_s),
    KEY("fault_ppm", VALUE_PPM, fault_rate_ppm),
    KEY("faults", VALUE_FAULTS, fault_kinds),
    KEY("stall_ns", VALUE_SIZE, stall_ns),
    KEY("seed", VALUE_SIZE, seed),
    KEY("checker", VALUE_NOT_BOOL, checker_off),
    KEY("inline", VALUE_BOOL, inline_engine),
};

_Static_assert(sizeof(size_t) == sizeof(uint64_t), "VALUE_SIZE stores size_t fields as uint64_t");

static bool apply_value(ks_dma_options *options, const option_key *key, const char *text)
{
    void *field = (char *)options + key->offset;
    uint64_t number;
    bool flag;
    switch (key->type) {
    case VALUE_BITS:
        if (!parse_u64(text, &number) || number < DMA_MIN_ADDRESS_BITS || number > DMA_MAX_ADDRESS_BITS)
            return false;
        *(unsigned *)field = (unsigned)number;
        return true;
    case VALUE_BOOL:
    case VALUE_NOT_BOOL:
        if (!parse_bool(text, &flag))
            return false;
        *(bool *)field = key->type == VALUE_BOOL ? flag : !flag;
        return true;
    case VALUE_SIZE:
        if (!parse_size(text, &number))
            return false;
        memcpy(field, &number, sizeof number);
        return true;
    case VALUE_U32:
        if (!parse_size(text, &number) || number > UINT32_MAX)
            return false;
        *(uint32_t *)field = (uint32_t)number;
        return true;
    case VALUE_PERCENT:
        if (!parse_u64(text, &number) || number > 100)
            return false;
        *(unsigned *)field = (unsigned)number;
        return true;
    case VALUE_PPM:
        if (!parse_u64(text, &number) || number > DMA_MAX_PPM)
            return false;
        *(uint32_t *)field = (uint32_t)number;
        return true;
    case VALUE_FAULTS:
        return parse_faults(text, (unsigned *)field);
    }
    return false;
}

static const char *key_list(char *buf, size_t buf_bytes)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof keys / sizeof keys[0] && used < buf_bytes; i++) {
        int n = snprintf(buf + used, buf_bytes - used, "%s%s", i == 0 ? "" : " ", keys[i].name);
        used += n > 0 ? (size_t)n : 0;
    }
    return buf;
}

static NTSTATUS apply_item(ks_dma_options *options, const char *item, ks_error *err)
{
    const char *equals = strchr(item, '=');
    if (equals == NULL || equals == item)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma options: '%s' is not key=value", item);
    size_t name_bytes = (size_t)(equals - item);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (strlen(keys[i].name) != name_bytes || strncmp(keys[i].name, item, name_bytes) != 0)
            continue;
        if (!apply_value(options, &keys[i], equals + 1))
            return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma options: %s='%s': expected %s", keys[i].name,
                                equals + 1, value_expected[keys[i].type]);
        return STATUS_SUCCESS;
    }
    char known[512];
    return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma options: unknown key '%.*s' (known: %s)", (int)name_bytes,
                        item, key_list(known, sizeof known));
}

NTSTATUS ks_dma_options_parse(ks_dma_options *options, const char *spec, ks_error *err)
{
    if (spec == NULL)
        return STATUS_SUCCESS;
    const char *cursor = spec;
    while (*cursor != '\0') {
        size_t length = strcspn(cursor, ",");
        char item[SPEC_ITEM_BYTES];
        if (length >= sizeof item)
            return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma options: item '%.40s...' too long", cursor);
        memcpy(item, cursor, length);
        item[length] = '\0';
        if (length > 0) {
            NTSTATUS status = apply_item(options, item, err);
            if (!NT_SUCCESS(status))
                return status;
        }
        cursor += length;
        if (*cursor == ',')
            cursor++;
    }
    return STATUS_SUCCESS;
}

const char *ks_dma_options_describe(const ks_dma_options *options, char *buf, size_t buf_bytes)
{
    const ks_dma_device_description *device = &options->device;
    snprintf(buf, buf_bytes,
             "mask=%u,coherent=%d,sg=%d,iommu=%d,bounce=%d,max_seg=%" PRIu64 ",max_segs=%u,align=%u,boundary=%" PRIu64
             ",high=%u,fault_ppm=%u,seed=%" PRIu64 "%s",
             device->address_bits == 0 ? 64u : device->address_bits, device->coherent, device->scatter_gather,
             options->iommu, !options->no_bounce, device->max_segment_bytes, device->max_segments,
             device->align_bytes == 0 ? 1u : device->align_bytes, device->boundary_bytes,
             options->high_memory_percent, options->fault_rate_ppm, options->seed,
             options->inline_engine ? ",inline=1" : "");
    return buf;
}
