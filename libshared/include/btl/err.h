/* Error convention shared by every module: functions return int, 0 on
 * success, a negative BTL_E* code on failure. Foreign error spaces (errno,
 * libpq, CURLcode, nng) are mapped where they enter. */
#ifndef BTL_ERR_H
#define BTL_ERR_H

enum {
    BTL_OK = 0,
    BTL_EINVAL = -1,        /* bad argument or malformed input */
    BTL_ENOMEM = -2,        /* allocation failed */
    BTL_EIO = -3,           /* OS-level I/O error */
    BTL_EDB = -4,           /* database error */
    BTL_EBUS = -5,          /* nng error */
    BTL_EPROTO = -6,        /* malformed frame / message */
    BTL_ECONFIG = -7,       /* configuration error */
    BTL_ENOTFOUND = -8,     /* no such object */
    BTL_ETIMEDOUT = -9,     /* deadline passed */
    BTL_EAGAIN = -10,       /* nothing now, try later */
    BTL_ETOOBIG = -11,      /* exceeds a bound */
    BTL_ECLOSED = -12,      /* peer or object closed */
    BTL_EHTTP = -13,        /* HTTP transport or status error */
    BTL_ECONFLICT = -14,    /* state transition not allowed */
    BTL_EPERM = -15,        /* not permitted */
    BTL_EUNSUPPORTED = -16, /* not implemented / not available */
};

/* Static string describing err; never NULL. */
const char *btl_strerror(int err);

/* Map an errno value to a BTL_E* code. */
int btl_err_from_errno(int e);

#endif
