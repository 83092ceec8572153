/*
 * error.c -- see error.h. Messages are truncated, never overflowed, at sizeof(message).
 */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

NTSTATUS ks_error_set(ks_error *err, NTSTATUS status, const char *fmt, ...)
{
    if (err == NULL)
        return status;
    err->status = status;
    va_list args;
    va_start(args, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, args);
    va_end(args);
    return status;
}

void ks_error_prefix(ks_error *err, const char *fmt, ...)
{
    if (err == NULL)
        return;
    char prefix[sizeof err->message], old[sizeof err->message];
    va_list args;
    va_start(args, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, args);
    va_end(args);
    memcpy(old, err->message, sizeof old);
    old[sizeof old - 1] = '\0';
    /* Concatenated by hand, truncating at the end: the message keeps its prefix first. */
    size_t used = strlen(prefix);
    memcpy(err->message, prefix, used + 1);
    const char *parts[2] = {": ", old};
    for (size_t part = 0; part < 2; part++) {
        size_t length = strlen(parts[part]), room = sizeof err->message - 1 - used;
        length = length < room ? length : room;
        memcpy(err->message + used, parts[part], length);
        used += length;
        err->message[used] = '\0';
    }
}

void ks_error_clear(ks_error *err)
{
    if (err == NULL)
        return;
    err->status = STATUS_SUCCESS;
    err->message[0] = '\0';
}

const char *ks_status_name(NTSTATUS status)
{
    static const struct {
        NTSTATUS status;
        const char *name;
    } names[] = {
        {STATUS_SUCCESS, "STATUS_SUCCESS"},
        {STATUS_NO_MORE_ENTRIES, "STATUS_NO_MORE_ENTRIES"},
        {STATUS_INVALID_PARAMETER, "STATUS_INVALID_PARAMETER"},
        {STATUS_INSUFFICIENT_RESOURCES, "STATUS_INSUFFICIENT_RESOURCES"},
        {STATUS_NOT_SUPPORTED, "STATUS_NOT_SUPPORTED"},
        {STATUS_UNSUCCESSFUL, "STATUS_UNSUCCESSFUL"},
        {STATUS_DATA_ERROR, "STATUS_DATA_ERROR"},
        {STATUS_INVALID_HANDLE, "STATUS_INVALID_HANDLE"},
        {STATUS_REVISION_MISMATCH, "STATUS_REVISION_MISMATCH"},
        {STATUS_OBJECT_NAME_NOT_FOUND, "STATUS_OBJECT_NAME_NOT_FOUND"},
        {STATUS_INVALID_IMAGE_FORMAT, "STATUS_INVALID_IMAGE_FORMAT"},
        {STATUS_ENTRYPOINT_NOT_FOUND, "STATUS_ENTRYPOINT_NOT_FOUND"},
        {STATUS_END_OF_FILE, "STATUS_END_OF_FILE"},
        {STATUS_DEVICE_BUSY, "STATUS_DEVICE_BUSY"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (names[i].status == status)
            return names[i].name;
    static _Thread_local char other[16];
    snprintf(other, sizeof other, "0x%08X", (unsigned)status);
    return other;
}
