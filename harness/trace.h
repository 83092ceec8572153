/*
 * trace.h -- the trace file: any run recorded, replayed exactly. A line-oriented text format so
 * that a failing run can be read, cut down by hand and attached to a bug report; the format is
 * documented in README.md ("Trace files"). A bad trace is rejected with source:line and what
 * was expected there; nothing in it is skipped silently.
 */
#ifndef KS_TRACE_H
#define KS_TRACE_H

#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "workload.h"

#define KS_TRACE_MAGIC "ksalloc-trace"
#define KS_TRACE_VERSION 1u
#define KS_TRACE_MAX_OPS (1ull << 32)

typedef struct ks_trace_writer ks_trace_writer;

/* Opens path for writing and writes the header (version, profile, seed, heaps, pins). */
NTSTATUS ks_trace_writer_open(const char *path, const ks_workload_config *config, const char *profile,
                              uint64_t seed, ks_trace_writer **writer, ks_error *err);
/* The same on an already open stream (not closed by the writer). */
NTSTATUS ks_trace_writer_open_stream(FILE *stream, const ks_workload_config *config, const char *profile,
                                     uint64_t seed, ks_trace_writer **writer, ks_error *err);
/* Appends one op; for ALLOCATE, allocated says whether it got a frame. */
NTSTATUS ks_trace_writer_op(ks_trace_writer *writer, const ks_op *op, bool allocated);
/* Writes the end line (the op count, which detects truncation), flushes, closes, frees. */
NTSTATUS ks_trace_writer_close(ks_trace_writer *writer, ks_error *err);

typedef struct ks_trace {
    ks_workload_config config; /* pins[i].entry is NULL: resolve pins[i].allocator yourself */
    char profile[32];
    uint64_t seed;
    ks_op *ops;
    uint8_t *allocated; /* per op: 1 if a recorded ALLOCATE got a frame */
    uint32_t *op_lines; /* per op: its line in the trace file, for messages (NULL when not parsed) */
    size_t op_count;
    char source[256];   /* the file (or source name) the trace was parsed from */
} ks_trace;

/* "t.trace:12" for op index of a parsed trace, into where. */
void ks_trace_op_where(const ks_trace *trace, size_t index, char *where, size_t where_bytes);

/* Parses a whole trace held in memory; source names it in errors ("t.trace:12: ..."). */
NTSTATUS ks_trace_parse(const char *text, size_t text_bytes, const char *source, ks_trace *trace, ks_error *err);
NTSTATUS ks_trace_load(const char *path, ks_trace *trace, ks_error *err);
void ks_trace_release(ks_trace *trace);

#endif
