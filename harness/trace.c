/*
 * trace.c -- the trace file (format v1, README.md "Trace files"): a writer that records a run as
 * it happens and a parser that reads it back for replay.
 *
 * Design. The format is line-oriented text so that a failing run can be read, cut down by hand
 * and attached to a bug report: a header (magic and version, profile and seed, heaps, pins), one
 * line per op, and an end line carrying the op count so that a file cut short is detected. The
 * writer checks the config against the same rules the parser enforces before writing a byte, so
 * whatever it writes parses back to the same config and ops (tests/test_trace.c round-trips it).
 * The parser is a single forward pass over the text held in memory, one line at a time, with a
 * fixed number of tokens per line and no recursion: its work is linear in the input and it never
 * reads outside it, whatever the bytes (NUL bytes, no final newline, absurd lengths), because a
 * trace is untrusted input and the parser is fuzzed. Nothing is skipped silently: every
 * rejection says "<source>:<line>: <what was wrong>, expected <what>".
 * DMA (still format v1: a file without DMA lines reads as before): an optional `dma <options>`
 * line right after the profile line carries the device options, and the ops C, R, L (capture,
 * render, loopback) carry a pin and a live index k like F and T.
 * Memory: the parsed ops (8 bytes each plus one outcome byte), grown by doubling.
 * Thread safety: a writer, and a parse, belong to one thread.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

#define TRACE_MAX_TOKENS 9u /* the pin line */
#define TRACE_INITIAL_OPS 256u
#define TRACE_PROFILE_BYTES sizeof(((ks_trace *)0)->profile)
#define TRACE_HEAP_LIMIT_BYTES ((uint64_t)1 << 40)
#define TRACE_QUOTE_BYTES 48u /* longest token quoted in a message */

_Static_assert(KS_MAX_PINS <= 256 && KS_MAX_HEAPS <= 256, "pin and heap indices fit in a byte");
_Static_assert(TRACE_PROFILE_BYTES >= 2, "a profile name has room for at least one character");

/* ---- rules shared by writer and parser ----------------------------------------------------- */

static bool pool_type_known(uint64_t pool)
{
    return pool == NonPagedPool || pool == PagedPool || pool == NonPagedPoolCacheAligned || pool == NonPagedPoolNx;
}

static bool mask_is_alignment(uint64_t mask)
{
    return mask <= UINT32_MAX && (mask & (mask + 1)) == 0;
}

/* A token the format can carry: non-empty, no whitespace, no '#', no control bytes. */
static bool token_writable(const char *text, size_t limit_bytes)
{
    size_t length = strnlen(text, limit_bytes);
    if (length == 0 || length >= limit_bytes)
        return false;
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c <= ' ' || c == '#' || c == 0x7f)
            return false;
    }
    return true;
}

/* ---- writer --------------------------------------------------------------------------------- */

struct ks_trace_writer {
    FILE *stream;
    bool owns_stream;
    unsigned pin_count;
    uint64_t op_count;
    int write_errno; /* first failed write, 0 if none */
    char source[256];
};

static NTSTATUS writer_check_pin(const ks_workload_config *config, unsigned i, ks_error *err)
{
    const ks_pin_config *pin = &config->pins[i];
    if (!token_writable(pin->allocator, sizeof pin->allocator))
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "trace: pin %u allocator name is empty or has a space, '#' or control byte", i);
    if (!mask_is_alignment(pin->framing.FileAlignment))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "trace: pin %u align mask 0x%x is not 2^k - 1", i,
                            (unsigned)pin->framing.FileAlignment);
    if (!pool_type_known((uint64_t)pin->framing.PoolType))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "trace: pin %u pool type %u is not one of 0, 1, 4, 512", i,
                            (unsigned)pin->framing.PoolType);
    if (pin->heap_index < -1 || pin->heap_index >= (int)config->heap_count)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "trace: pin %u names heap %d, expected -1 to %d", i,
                            pin->heap_index, (int)config->heap_count - 1);
    return STATUS_SUCCESS;
}

static NTSTATUS writer_check(const ks_workload_config *config, const char *profile, ks_error *err)
{
    if (config == NULL || profile == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "trace: %s is NULL", config ? "profile" : "config");
    if (!token_writable(profile, TRACE_PROFILE_BYTES))
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "trace: profile name '%s' must be 1 to %zu characters without spaces or '#'", profile,
                            TRACE_PROFILE_BYTES - 1);
    if (config->pin_count == 0 || config->pin_count > KS_MAX_PINS)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "trace: %u pins, expected 1 to %u", config->pin_count,
                            KS_MAX_PINS);
    if (config->heap_count > KS_MAX_HEAPS)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "trace: %u heaps, expected at most %u", config->heap_count,
                            KS_MAX_HEAPS);
    if (memchr(config->dma_options, '\0', sizeof config->dma_options) == NULL ||
        (config->dma_options[0] != '\0' && !token_writable(config->dma_options, sizeof config->dma_options)))
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "trace: dma options must be up to %zu characters without spaces or '#'",
                            sizeof config->dma_options - 1);
    for (unsigned i = 0; i < config->heap_count; i++)
        if (config->heap_bytes[i] == 0 || (uint64_t)config->heap_bytes[i] > TRACE_HEAP_LIMIT_BYTES)
            return ks_error_set(err, STATUS_INVALID_PARAMETER, "trace: heap %u of %zu bytes, expected 1 to 2^40", i,
                                config->heap_bytes[i]);
    for (unsigned i = 0; i < config->pin_count; i++) {
        NTSTATUS status = writer_check_pin(config, i, err);
        if (!NT_SUCCESS(status))
            return status;
    }
    return STATUS_SUCCESS;
}

static void writer_header(ks_trace_writer *writer, const ks_workload_config *config, const char *profile,
                          uint64_t seed)
{
    FILE *out = writer->stream;
    fprintf(out, "%s %u\n", KS_TRACE_MAGIC, KS_TRACE_VERSION);
    fprintf(out, "profile %s seed %llu\n", profile, (unsigned long long)seed);
    if (config->dma_options[0] != '\0')
        fprintf(out, "dma %s\n", config->dma_options);
    for (unsigned i = 0; i < config->heap_count; i++)
        fprintf(out, "heap %u %llu\n", i, (unsigned long long)config->heap_bytes[i]);
    for (unsigned i = 0; i < config->pin_count; i++) {
        const ks_pin_config *pin = &config->pins[i];
        fprintf(out, "pin %u %s frames=%u frame_bytes=%u align_mask=0x%x flags=0x%x pool=%u heap=%d\n", i,
                pin->allocator, (unsigned)pin->framing.Frames, (unsigned)pin->framing.FrameSize,
                (unsigned)pin->framing.FileAlignment, (unsigned)pin->framing.RequirementsFlags,
                (unsigned)pin->framing.PoolType, pin->heap_index);
    }
    if (ferror(out) && writer->write_errno == 0)
        writer->write_errno = errno ? errno : EIO;
}

static NTSTATUS writer_create(FILE *stream, bool owns_stream, const char *source, const ks_workload_config *config,
                              const char *profile, uint64_t seed, ks_trace_writer **writer_out, ks_error *err)
{
    ks_trace_writer *writer = calloc(1, sizeof *writer);
    if (writer == NULL) {
        if (owns_stream)
            fclose(stream);
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "trace '%s': out of memory", source);
    }
    writer->stream = stream;
    writer->owns_stream = owns_stream;
    writer->pin_count = config->pin_count;
    snprintf(writer->source, sizeof writer->source, "%s", source);
    writer_header(writer, config, profile, seed);
    *writer_out = writer;
    return STATUS_SUCCESS;
}

NTSTATUS ks_trace_writer_open(const char *path, const ks_workload_config *config, const char *profile, uint64_t seed,
                              ks_trace_writer **writer, ks_error *err)
{
    if (path == NULL || writer == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "trace: %s is NULL", path ? "writer" : "path");
    *writer = NULL;
    NTSTATUS status = writer_check(config, profile, err);
    if (!NT_SUCCESS(status))
        return status;
    FILE *stream = fopen(path, "w");
    if (stream == NULL)
        return ks_error_set(err, STATUS_UNSUCCESSFUL, "trace '%s': cannot open for writing: %s", path,
                            strerror(errno));
    return writer_create(stream, true, path, config, profile, seed, writer, err);
}

NTSTATUS ks_trace_writer_open_stream(FILE *stream, const ks_workload_config *config, const char *profile,
                                     uint64_t seed, ks_trace_writer **writer, ks_error *err)
{
    if (stream == NULL || writer == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "trace: %s is NULL", stream ? "writer" : "stream");
    *writer = NULL;
    NTSTATUS status = writer_check(config, profile, err);
    if (!NT_SUCCESS(status))
        return status;
    return writer_create(stream, false, "<stream>", config, profile, seed, writer, err);
}

NTSTATUS ks_trace_writer_op(ks_trace_writer *writer, const ks_op *op, bool allocated)
{
    if (writer == NULL || op == NULL || op->pin >= writer->pin_count)
        return STATUS_INVALID_PARAMETER;
    if (writer->op_count >= KS_TRACE_MAX_OPS)
        return STATUS_INSUFFICIENT_RESOURCES;
    int written;
    switch (op->kind) {
    case KS_OP_ALLOCATE: written = fprintf(writer->stream, "A %u %s\n", op->pin, allocated ? "ok" : "null"); break;
    case KS_OP_FREE: written = fprintf(writer->stream, "F %u %u\n", op->pin, (unsigned)op->arg); break;
    case KS_OP_TOUCH: written = fprintf(writer->stream, "T %u %u\n", op->pin, (unsigned)op->arg); break;
    case KS_OP_DMA_CAPTURE: written = fprintf(writer->stream, "C %u %u\n", op->pin, (unsigned)op->arg); break;
    case KS_OP_DMA_RENDER: written = fprintf(writer->stream, "R %u %u\n", op->pin, (unsigned)op->arg); break;
    case KS_OP_DMA_LOOPBACK: written = fprintf(writer->stream, "L %u %u\n", op->pin, (unsigned)op->arg); break;
    default: return STATUS_NOT_SUPPORTED;
    }
    if (written < 0) {
        if (writer->write_errno == 0)
            writer->write_errno = errno ? errno : EIO;
        return STATUS_UNSUCCESSFUL;
    }
    writer->op_count++;
    return STATUS_SUCCESS;
}

NTSTATUS ks_trace_writer_close(ks_trace_writer *writer, ks_error *err)
{
    if (writer == NULL)
        return STATUS_SUCCESS;
    fprintf(writer->stream, "end %llu\n", (unsigned long long)writer->op_count);
    if ((fflush(writer->stream) != 0 || ferror(writer->stream)) && writer->write_errno == 0)
        writer->write_errno = errno ? errno : EIO;
    if (writer->owns_stream && fclose(writer->stream) != 0 && writer->write_errno == 0)
        writer->write_errno = errno ? errno : EIO;
    NTSTATUS status = STATUS_SUCCESS;
    if (writer->write_errno != 0)
        status = ks_error_set(err, STATUS_UNSUCCESSFUL, "trace '%s': write failed after %llu ops: %s", writer->source,
                              (unsigned long long)writer->op_count, strerror(writer->write_errno));
    free(writer);
    return status;
}

/* ---- parser --------------------------------------------------------------------------------- */

typedef struct token {
    const char *start;
    size_t length;
} token;

typedef enum parse_state {
    EXPECT_MAGIC,
    EXPECT_PROFILE,
    IN_HEAPS, /* heap lines, then the first pin */
    IN_PINS,  /* more pins, or the first op */
    IN_OPS,
    AFTER_END,
} parse_state;

typedef struct trace_parser {
    const char *source;
    unsigned long line_number;
    parse_state state;
    ks_trace *trace;
    size_t ops_capacity;
    ks_error *err;
    token tokens[TRACE_MAX_TOKENS];
    size_t token_count;
    bool too_many_tokens;
    bool dma_seen; /* the dma line was read */
    char quoted[TRACE_QUOTE_BYTES + 4];
} trace_parser;

/* Every rejection goes through here: "<source>:<line>: <what>, expected <what>". */
static NTSTATUS parse_error(trace_parser *parser, NTSTATUS status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static NTSTATUS parse_error(trace_parser *parser, NTSTATUS status, const char *fmt, ...)
{
    char what[400];
    va_list args;
    va_start(args, fmt);
    vsnprintf(what, sizeof what, fmt, args);
    va_end(args);
    return ks_error_set(parser->err, status, "%s:%lu: %s", parser->source, parser->line_number, what);
}

/* The token made printable for a message (control and non-ASCII bytes as '?', long ones cut). */
static const char *quote(trace_parser *parser, token tok)
{
    size_t length = tok.length < TRACE_QUOTE_BYTES ? tok.length : TRACE_QUOTE_BYTES;
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)tok.start[i];
        parser->quoted[i] = (c >= ' ' && c < 0x7f) ? (char)c : '?';
    }
    strcpy(&parser->quoted[length], tok.length > length ? "..." : "");
    return parser->quoted;
}

static bool token_is(token tok, const char *word)
{
    size_t length = strlen(word);
    return tok.length == length && memcmp(tok.start, word, length) == 0;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* Splits a line (comment already cut) into at most TRACE_MAX_TOKENS tokens. */
static void tokenize(trace_parser *parser, const char *line, size_t length)
{
    parser->token_count = 0;
    parser->too_many_tokens = false;
    size_t i = 0;
    while (i < length) {
        while (i < length && is_blank(line[i]))
            i++;
        if (i == length)
            break;
        size_t start = i;
        while (i < length && !is_blank(line[i]))
            i++;
        if (parser->token_count == TRACE_MAX_TOKENS) {
            parser->too_many_tokens = true;
            return;
        }
        parser->tokens[parser->token_count++] = (token){line + start, i - start};
    }
}

typedef enum number_result { NUMBER_OK, NUMBER_BAD, NUMBER_RANGE } number_result;

static number_result parse_decimal(token tok, uint64_t max, uint64_t *value)
{
    if (tok.length == 0)
        return NUMBER_BAD;
    uint64_t result = 0;
    bool over = false;
    for (size_t i = 0; i < tok.length; i++) {
        unsigned char c = (unsigned char)tok.start[i];
        if (c < '0' || c > '9')
            return NUMBER_BAD;
        unsigned digit = c - '0';
        if (result > (UINT64_MAX - digit) / 10)
            over = true; /* keep scanning: a later non-digit makes it BAD, not RANGE */
        else
            result = result * 10 + digit;
    }
    if (over || result > max)
        return NUMBER_RANGE;
    *value = result;
    return NUMBER_OK;
}

static number_result parse_hex(token tok, uint64_t max, uint64_t *value)
{
    if (tok.length < 3 || tok.start[0] != '0' || (tok.start[1] != 'x' && tok.start[1] != 'X'))
        return NUMBER_BAD;
    uint64_t result = 0;
    bool over = false;
    for (size_t i = 2; i < tok.length; i++) {
        unsigned char c = (unsigned char)tok.start[i];
        unsigned digit;
        if (c >= '0' && c <= '9')
            digit = c - '0';
        else if (c >= 'a' && c <= 'f')
            digit = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            digit = c - 'A' + 10;
        else
            return NUMBER_BAD;
        if (result > (UINT64_MAX >> 4))
            over = true;
        else
            result = (result << 4) | digit;
    }
    if (over || result > max)
        return NUMBER_RANGE;
    *value = result;
    return NUMBER_OK;
}

/* Parses tok as what (decimal, or hex with "0x" when hex) within [0, max]. */
static NTSTATUS read_number(trace_parser *parser, token tok, const char *what, bool hex, uint64_t max,
                            uint64_t *value)
{
    number_result result = hex ? parse_hex(tok, max, value) : parse_decimal(tok, max, value);
    if (result == NUMBER_BAD)
        return parse_error(parser, STATUS_DATA_ERROR, "bad number '%s' for %s, expected %s", quote(parser, tok),
                           what, hex ? "0x and hex digits" : "decimal digits");
    if (result == NUMBER_RANGE && hex)
        return parse_error(parser, STATUS_DATA_ERROR, "%s '%s' out of range, expected at most 0x%llx", what,
                           quote(parser, tok), (unsigned long long)max);
    if (result == NUMBER_RANGE)
        return parse_error(parser, STATUS_DATA_ERROR, "%s '%s' out of range, expected at most %llu", what,
                           quote(parser, tok), (unsigned long long)max);
    return STATUS_SUCCESS;
}

/* "key=value": value as a number, with the key checked. */
static NTSTATUS read_field(trace_parser *parser, token tok, const char *key, bool hex, uint64_t max, uint64_t *value)
{
    size_t key_length = strlen(key);
    if (tok.length <= key_length || memcmp(tok.start, key, key_length) != 0 || tok.start[key_length] != '=')
        return parse_error(parser, STATUS_DATA_ERROR, "bad field '%s', expected %s=<%s>", quote(parser, tok), key,
                           hex ? "0xhex" : "number");
    token value_token = {tok.start + key_length + 1, tok.length - key_length - 1};
    return read_number(parser, value_token, key, hex, max, value);
}

static NTSTATUS expect_fields(trace_parser *parser, size_t count, const char *shape)
{
    if (parser->token_count == count && !parser->too_many_tokens)
        return STATUS_SUCCESS;
    if (parser->token_count < count)
        return parse_error(parser, STATUS_DATA_ERROR, "'%s' line has %zu fields, expected '%s'",
                           quote(parser, parser->tokens[0]), parser->token_count, shape);
    token extra = count < parser->token_count ? parser->tokens[count] : (token){"...", 3};
    return parse_error(parser, STATUS_DATA_ERROR, "unexpected '%s' at the end of the line, expected '%s'",
                       quote(parser, extra), shape);
}

/* ---- header lines --------------------------------------------------------------------------- */

static NTSTATUS parse_magic(trace_parser *parser)
{
    token *tokens = parser->tokens;
    if (!token_is(tokens[0], KS_TRACE_MAGIC))
        return parse_error(parser, STATUS_DATA_ERROR, "bad magic '%s', expected '%s %u'", quote(parser, tokens[0]),
                           KS_TRACE_MAGIC, KS_TRACE_VERSION);
    NTSTATUS status = expect_fields(parser, 2, KS_TRACE_MAGIC " <version>");
    uint64_t version = 0;
    if (NT_SUCCESS(status) && parse_decimal(tokens[1], UINT32_MAX, &version) != NUMBER_OK)
        status = parse_error(parser, STATUS_DATA_ERROR, "bad version '%s', expected %u", quote(parser, tokens[1]),
                             KS_TRACE_VERSION);
    if (NT_SUCCESS(status) && version != KS_TRACE_VERSION)
        status = parse_error(parser, STATUS_REVISION_MISMATCH, "unsupported version %llu, expected %u",
                             (unsigned long long)version, KS_TRACE_VERSION);
    parser->state = EXPECT_PROFILE;
    return status;
}

static NTSTATUS parse_profile(trace_parser *parser)
{
    token *tokens = parser->tokens;
    if (!token_is(tokens[0], "profile"))
        return parse_error(parser, STATUS_DATA_ERROR, "unexpected '%s', expected 'profile <name> seed <u64>'",
                           quote(parser, tokens[0]));
    NTSTATUS status = expect_fields(parser, 4, "profile <name> seed <u64>");
    if (!NT_SUCCESS(status))
        return status;
    if (tokens[1].length >= TRACE_PROFILE_BYTES)
        return parse_error(parser, STATUS_DATA_ERROR, "profile name '%s' too long, expected at most %zu characters",
                           quote(parser, tokens[1]), TRACE_PROFILE_BYTES - 1);
    if (!token_is(tokens[2], "seed"))
        return parse_error(parser, STATUS_DATA_ERROR, "unexpected '%s', expected 'seed <u64>'",
                           quote(parser, tokens[2]));
    status = read_number(parser, tokens[3], "seed", false, UINT64_MAX, &parser->trace->seed);
    if (!NT_SUCCESS(status))
        return status;
    memcpy(parser->trace->profile, tokens[1].start, tokens[1].length);
    parser->trace->profile[tokens[1].length] = '\0';
    parser->state = IN_HEAPS;
    return STATUS_SUCCESS;
}

/* An index that must be the next one in order: "duplicate" when it repeats an earlier one. */
static NTSTATUS read_next_index(trace_parser *parser, token tok, const char *what, unsigned expected,
                                unsigned limit)
{
    uint64_t index = 0;
    NTSTATUS status = read_number(parser, tok, what, false, UINT32_MAX, &index);
    if (!NT_SUCCESS(status))
        return status;
    if (expected >= limit)
        return parse_error(parser, STATUS_DATA_ERROR, "%s %llu is one too many, expected at most %u %ss", what,
                           (unsigned long long)index, limit, what);
    if (index < expected)
        return parse_error(parser, STATUS_DATA_ERROR, "duplicate %s %llu, expected %s %u", what,
                           (unsigned long long)index, what, expected);
    if (index > expected)
        return parse_error(parser, STATUS_DATA_ERROR, "%s %llu out of order, expected %s %u", what,
                           (unsigned long long)index, what, expected);
    return STATUS_SUCCESS;
}

static NTSTATUS parse_dma(trace_parser *parser)
{
    ks_workload_config *config = &parser->trace->config;
    if (parser->state != IN_HEAPS || config->heap_count > 0 || parser->dma_seen)
        return parse_error(parser, STATUS_DATA_ERROR, "%s dma line, expected it once, right after the profile line",
                           parser->dma_seen ? "a second" : "a late");
    NTSTATUS status = expect_fields(parser, 2, "dma <options>");
    if (!NT_SUCCESS(status))
        return status;
    token options = parser->tokens[1];
    if (options.length >= sizeof config->dma_options)
        return parse_error(parser, STATUS_DATA_ERROR, "dma options '%s' of %zu bytes, expected at most %zu",
                           quote(parser, options), options.length, sizeof config->dma_options - 1);
    memcpy(config->dma_options, options.start, options.length);
    config->dma_options[options.length] = '\0';
    parser->dma_seen = true;
    return STATUS_SUCCESS;
}

static NTSTATUS parse_heap(trace_parser *parser)
{
    ks_workload_config *config = &parser->trace->config;
    if (parser->state != IN_HEAPS)
        return parse_error(parser, STATUS_DATA_ERROR, "heap line after the first pin, expected heaps before pins");
    NTSTATUS status = expect_fields(parser, 3, "heap <index> <size_bytes>");
    if (NT_SUCCESS(status))
        status = read_next_index(parser, parser->tokens[1], "heap", config->heap_count, KS_MAX_HEAPS);
    uint64_t size_bytes = 0;
    if (NT_SUCCESS(status))
        status = read_number(parser, parser->tokens[2], "heap size", false, TRACE_HEAP_LIMIT_BYTES, &size_bytes);
    if (NT_SUCCESS(status) && size_bytes == 0)
        status = parse_error(parser, STATUS_DATA_ERROR, "heap size 0, expected 1 to 2^40 bytes");
    if (!NT_SUCCESS(status))
        return status;
    config->heap_bytes[config->heap_count++] = (size_t)size_bytes;
    return STATUS_SUCCESS;
}

static NTSTATUS parse_pin_heap(trace_parser *parser, token tok, ks_pin_config *pin)
{
    unsigned heap_count = parser->trace->config.heap_count;
    if (token_is(tok, "heap=-1")) {
        pin->heap_index = -1;
        return STATUS_SUCCESS;
    }
    uint64_t index = 0;
    NTSTATUS status = read_field(parser, tok, "heap", false, UINT32_MAX, &index);
    if (NT_SUCCESS(status) && index >= heap_count)
        status = heap_count == 0 ? parse_error(parser, STATUS_DATA_ERROR, "heap=%llu but no heap is declared, "
                                               "expected heap=-1", (unsigned long long)index)
                                 : parse_error(parser, STATUS_DATA_ERROR, "heap=%llu out of range, expected -1 to %u",
                                               (unsigned long long)index, heap_count - 1);
    if (NT_SUCCESS(status))
        pin->heap_index = (int)index;
    return status;
}

/* frames=, frame_bytes=, align_mask=, flags=, pool= into the pin's framing. */
static NTSTATUS parse_pin_framing(trace_parser *parser, KSALLOCATOR_FRAMING *framing)
{
    uint64_t frames = 0, frame_bytes = 0, align_mask = 0, flags = 0, pool = 0;
    token *tokens = parser->tokens;
    NTSTATUS status = read_field(parser, tokens[3], "frames", false, UINT32_MAX, &frames);
    if (NT_SUCCESS(status))
        status = read_field(parser, tokens[4], "frame_bytes", false, UINT32_MAX, &frame_bytes);
    if (NT_SUCCESS(status))
        status = read_field(parser, tokens[5], "align_mask", true, UINT32_MAX, &align_mask);
    if (NT_SUCCESS(status) && !mask_is_alignment(align_mask))
        status = parse_error(parser, STATUS_DATA_ERROR, "align_mask 0x%llx is not an alignment mask, expected 2^k - 1",
                             (unsigned long long)align_mask);
    if (NT_SUCCESS(status))
        status = read_field(parser, tokens[6], "flags", true, UINT32_MAX, &flags);
    if (NT_SUCCESS(status))
        status = read_field(parser, tokens[7], "pool", false, UINT32_MAX, &pool);
    if (NT_SUCCESS(status) && !pool_type_known(pool))
        status = parse_error(parser, STATUS_DATA_ERROR, "pool=%llu is not a pool type, expected 0, 1, 4 or 512",
                             (unsigned long long)pool);
    if (!NT_SUCCESS(status))
        return status;
    memset(framing, 0, sizeof *framing);
    framing->Frames = (ULONG)frames;
    framing->FrameSize = (ULONG)frame_bytes;
    framing->FileAlignment = (ULONG)align_mask;
    framing->RequirementsFlags = (ULONG)flags;
    framing->PoolType = (POOL_TYPE)pool;
    return STATUS_SUCCESS;
}

static NTSTATUS parse_pin(trace_parser *parser)
{
    ks_workload_config *config = &parser->trace->config;
    if (parser->state == IN_OPS)
        return parse_error(parser, STATUS_DATA_ERROR, "pin line after the first op, expected pins before ops");
    NTSTATUS status = expect_fields(parser, TRACE_MAX_TOKENS,
                                    "pin <index> <allocator> frames=<u32> frame_bytes=<u32> align_mask=0x<hex> "
                                    "flags=0x<hex> pool=<u32> heap=<-1|index>");
    if (NT_SUCCESS(status))
        status = read_next_index(parser, parser->tokens[1], "pin", config->pin_count, KS_MAX_PINS);
    if (!NT_SUCCESS(status))
        return status;
    token allocator = parser->tokens[2];
    if (allocator.length >= KS_ALLOCATOR_NAME_BYTES)
        return parse_error(parser, STATUS_DATA_ERROR, "allocator name '%s' of %zu bytes, expected at most %u",
                           quote(parser, allocator), allocator.length, KS_ALLOCATOR_NAME_BYTES - 1);
    ks_pin_config *pin = &config->pins[config->pin_count];
    memset(pin, 0, sizeof *pin);
    status = parse_pin_framing(parser, &pin->framing);
    if (NT_SUCCESS(status))
        status = parse_pin_heap(parser, parser->tokens[8], pin);
    if (!NT_SUCCESS(status))
        return status;
    memcpy(pin->allocator, allocator.start, allocator.length);
    pin->allocator[allocator.length] = '\0';
    config->pin_count++;
    parser->state = IN_PINS;
    return STATUS_SUCCESS;
}

/* ---- ops and end ---------------------------------------------------------------------------- */

static NTSTATUS need_pins(trace_parser *parser)
{
    if (parser->trace->config.pin_count > 0)
        return STATUS_SUCCESS;
    return parse_error(parser, STATUS_DATA_ERROR, "'%s' before any pin line, expected 'pin 0 <allocator> ...'",
                       quote(parser, parser->tokens[0]));
}

static NTSTATUS append_op(trace_parser *parser, const ks_op *op, bool allocated)
{
    ks_trace *trace = parser->trace;
    if (trace->op_count >= KS_TRACE_MAX_OPS)
        return parse_error(parser, STATUS_DATA_ERROR, "more than %llu ops, expected an end line",
                           (unsigned long long)KS_TRACE_MAX_OPS);
    if (trace->op_count == parser->ops_capacity) {
        size_t capacity = parser->ops_capacity ? parser->ops_capacity * 2 : TRACE_INITIAL_OPS;
        ks_op *ops = realloc(trace->ops, capacity * sizeof *ops);
        if (ops != NULL)
            trace->ops = ops;
        uint8_t *outcomes = ops ? realloc(trace->allocated, capacity) : NULL;
        if (outcomes != NULL)
            trace->allocated = outcomes;
        uint32_t *lines = outcomes ? realloc(trace->op_lines, capacity * sizeof *lines) : NULL;
        if (lines == NULL)
            return parse_error(parser, STATUS_INSUFFICIENT_RESOURCES, "out of memory after %zu ops, expected less",
                               trace->op_count);
        trace->op_lines = lines;
        parser->ops_capacity = capacity;
    }
    trace->ops[trace->op_count] = *op;
    trace->allocated[trace->op_count] = allocated ? 1 : 0;
    trace->op_lines[trace->op_count] = parser->line_number > UINT32_MAX ? UINT32_MAX : (uint32_t)parser->line_number;
    trace->op_count++;
    return STATUS_SUCCESS;
}

static NTSTATUS parse_op(trace_parser *parser, ks_op_kind kind)
{
    NTSTATUS status = need_pins(parser);
    if (NT_SUCCESS(status))
        status = expect_fields(parser, 3, kind == KS_OP_ALLOCATE ? "A <pin> <ok|null>" : "F|T|C|R|L <pin> <k>");
    uint64_t pin = 0, k = 0;
    if (NT_SUCCESS(status))
        status = read_number(parser, parser->tokens[1], "pin", false, UINT32_MAX, &pin);
    unsigned pin_count = parser->trace->config.pin_count;
    if (NT_SUCCESS(status) && pin >= pin_count)
        status = parse_error(parser, STATUS_DATA_ERROR, "pin %llu out of range, expected 0 to %u",
                             (unsigned long long)pin, pin_count - 1);
    bool allocated = false;
    if (NT_SUCCESS(status) && kind == KS_OP_ALLOCATE) {
        allocated = token_is(parser->tokens[2], "ok");
        if (!allocated && !token_is(parser->tokens[2], "null"))
            status = parse_error(parser, STATUS_DATA_ERROR, "bad outcome '%s', expected ok or null",
                                 quote(parser, parser->tokens[2]));
    } else if (NT_SUCCESS(status)) {
        status = read_number(parser, parser->tokens[2], "k", false, UINT32_MAX, &k);
    }
    if (!NT_SUCCESS(status))
        return status;
    ks_op op = {.kind = (uint8_t)kind, .pin = (uint8_t)pin, .arg = (uint32_t)k};
    parser->state = IN_OPS;
    return append_op(parser, &op, allocated);
}

static NTSTATUS parse_end(trace_parser *parser)
{
    NTSTATUS status = need_pins(parser);
    if (NT_SUCCESS(status))
        status = expect_fields(parser, 2, "end <op_count>");
    uint64_t count = 0;
    if (NT_SUCCESS(status))
        status = read_number(parser, parser->tokens[1], "op count", false, KS_TRACE_MAX_OPS, &count);
    if (NT_SUCCESS(status) && count != parser->trace->op_count)
        status = parse_error(parser, STATUS_DATA_ERROR, "end says %llu ops but the trace has %zu, expected end %zu",
                             (unsigned long long)count, parser->trace->op_count, parser->trace->op_count);
    if (NT_SUCCESS(status))
        parser->state = AFTER_END;
    return status;
}

static NTSTATUS parse_body_line(trace_parser *parser)
{
    token first = parser->tokens[0];
    if (token_is(first, "heap"))
        return parse_heap(parser);
    if (token_is(first, "pin"))
        return parse_pin(parser);
    if (token_is(first, "A"))
        return parse_op(parser, KS_OP_ALLOCATE);
    if (token_is(first, "F"))
        return parse_op(parser, KS_OP_FREE);
    if (token_is(first, "T"))
        return parse_op(parser, KS_OP_TOUCH);
    if (token_is(first, "C"))
        return parse_op(parser, KS_OP_DMA_CAPTURE);
    if (token_is(first, "R"))
        return parse_op(parser, KS_OP_DMA_RENDER);
    if (token_is(first, "L"))
        return parse_op(parser, KS_OP_DMA_LOOPBACK);
    if (token_is(first, "dma"))
        return parse_dma(parser);
    if (token_is(first, "end"))
        return parse_end(parser);
    const char *expected = parser->state == IN_OPS    ? "A, F, T, C, R, L or end"
                           : parser->state == IN_PINS ? "pin, A, F, T, C, R, L or end"
                                                      : "dma, heap or pin";
    return parse_error(parser, STATUS_DATA_ERROR, "unknown %s '%s', expected %s",
                       parser->state == IN_HEAPS ? "line" : "op", quote(parser, first), expected);
}

static NTSTATUS parse_line(trace_parser *parser, const char *line, size_t length)
{
    const char *nul = memchr(line, '\0', length);
    if (nul != NULL)
        return parse_error(parser, STATUS_DATA_ERROR, "NUL byte at column %zu, expected text",
                           (size_t)(nul - line) + 1);
    const char *comment = memchr(line, '#', length);
    size_t text_length = comment ? (size_t)(comment - line) : length;
    /* The writer refuses control bytes in names (token_writable); so does the reader, so that
     * every trace it accepts can be written back byte for byte. Comments may hold anything. */
    for (size_t i = 0; i < text_length; i++) {
        unsigned char c = (unsigned char)line[i];
        if ((c < ' ' && c != '\t' && c != '\r') || c == 0x7f)
            return parse_error(parser, STATUS_DATA_ERROR, "control byte 0x%02x at column %zu, expected text", c,
                               i + 1);
    }
    tokenize(parser, line, text_length);
    if (parser->token_count == 0)
        return STATUS_SUCCESS; /* blank or comment only */
    switch (parser->state) {
    case EXPECT_MAGIC: return parse_magic(parser);
    case EXPECT_PROFILE: return parse_profile(parser);
    case AFTER_END:
        return parse_error(parser, STATUS_DATA_ERROR, "trailing '%s' after the end line, expected nothing",
                           quote(parser, parser->tokens[0]));
    default: return parse_body_line(parser);
    }
}

static NTSTATUS parse_eof(trace_parser *parser)
{
    if (parser->line_number == 0)
        parser->line_number = 1;
    switch (parser->state) {
    case AFTER_END: return STATUS_SUCCESS;
    case EXPECT_MAGIC:
        return parse_error(parser, STATUS_END_OF_FILE, "empty trace, expected '%s %u'", KS_TRACE_MAGIC,
                           KS_TRACE_VERSION);
    case EXPECT_PROFILE:
        return parse_error(parser, STATUS_END_OF_FILE, "truncated: no 'profile' line, expected 'profile <name> "
                                                       "seed <u64>'");
    default:
        return parse_error(parser, STATUS_END_OF_FILE, "truncated: no 'end' line after %zu ops",
                           parser->trace->op_count);
    }
}

NTSTATUS ks_trace_parse(const char *text, size_t text_bytes, const char *source, ks_trace *trace, ks_error *err)
{
    if (trace == NULL || (text == NULL && text_bytes != 0))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "trace parse: %s is NULL", trace ? "text" : "trace");
    memset(trace, 0, sizeof *trace);
    trace_parser parser = {.source = source ? source : "<trace>", .trace = trace, .err = err};
    snprintf(trace->source, sizeof trace->source, "%s", parser.source);
    NTSTATUS status = STATUS_SUCCESS;
    size_t offset = 0;
    while (NT_SUCCESS(status) && offset < text_bytes) {
        const char *line = text + offset;
        const char *newline = memchr(line, '\n', text_bytes - offset);
        size_t length = newline ? (size_t)(newline - line) : text_bytes - offset;
        parser.line_number++;
        status = parse_line(&parser, line, length);
        offset += length + (newline ? 1 : 0);
    }
    if (NT_SUCCESS(status))
        status = parse_eof(&parser);
    if (!NT_SUCCESS(status))
        ks_trace_release(trace);
    return status;
}

void ks_trace_op_where(const ks_trace *trace, size_t index, char *where, size_t where_bytes)
{
    if (trace->op_lines != NULL && index < trace->op_count)
        snprintf(where, where_bytes, "%s:%u", trace->source, (unsigned)trace->op_lines[index]);
    else
        snprintf(where, where_bytes, "%s", trace->source);
}

/* Reads a whole file; works on pipes and devices too, where the size is not known up front. */
static NTSTATUS read_file(const char *path, char **text_out, size_t *bytes_out, ks_error *err)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return ks_error_set(err, STATUS_OBJECT_NAME_NOT_FOUND, "%s: cannot open: %s", path, strerror(errno));
    size_t capacity = 1 << 16, used = 0;
    char *text = malloc(capacity);
    while (text != NULL) {
        used += fread(text + used, 1, capacity - used, file);
        if (used < capacity)
            break;
        char *grown = capacity <= SIZE_MAX / 2 ? realloc(text, capacity * 2) : NULL;
        if (grown == NULL)
            free(text);
        text = grown;
        capacity *= 2;
    }
    bool failed = text != NULL && ferror(file);
    int saved_errno = errno;
    fclose(file);
    if (text == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "%s: out of memory reading the trace", path);
    if (failed) {
        free(text);
        return ks_error_set(err, STATUS_UNSUCCESSFUL, "%s: read failed: %s", path, strerror(saved_errno));
    }
    *text_out = text;
    *bytes_out = used;
    return STATUS_SUCCESS;
}

NTSTATUS ks_trace_load(const char *path, ks_trace *trace, ks_error *err)
{
    if (path == NULL || trace == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "trace load: %s is NULL", path ? "trace" : "path");
    memset(trace, 0, sizeof *trace);
    char *text = NULL;
    size_t text_bytes = 0;
    NTSTATUS status = read_file(path, &text, &text_bytes, err);
    if (!NT_SUCCESS(status))
        return status;
    status = ks_trace_parse(text, text_bytes, path, trace, err);
    free(text);
    return status;
}

void ks_trace_release(ks_trace *trace)
{
    if (trace == NULL)
        return;
    free(trace->ops);
    free(trace->allocated);
    free(trace->op_lines);
    memset(trace, 0, sizeof *trace);
}
