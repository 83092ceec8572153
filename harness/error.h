/*
 * error.h -- errors as values. Library code never prints or exits: it returns an NTSTATUS and,
 * when the caller passed a ks_error, a message naming what was wrong and where (file:line, op
 * index, address). Only the CLI decides what to print and which exit code to return.
 */
#ifndef KS_ERROR_H
#define KS_ERROR_H

#include "ksalloc.h"

typedef struct ks_error {
    NTSTATUS status;
    char message[512];
} ks_error;

/* Records status and a printf-style message in err (which may be NULL); returns status so that
 * callers can write `return ks_error_set(err, STATUS_INVALID_PARAMETER, "...", ...);`. */
NTSTATUS ks_error_set(ks_error *err, NTSTATUS status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Puts "<prefix>: " before err's message (which may be NULL), keeping its status. The prefix is
 * formatted first and the old message copied, so it may name err->message's contents safely. */
void ks_error_prefix(ks_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clears err to STATUS_SUCCESS and an empty message. */
void ks_error_clear(ks_error *err);

/* "STATUS_INVALID_PARAMETER" for the codes in ksalloc.h, "0xC0000123" otherwise. The buffer
 * variant is for codes outside the table; the pointer is valid until the next call in the
 * same thread. */
const char *ks_status_name(NTSTATUS status);

#endif
