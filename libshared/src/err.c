#include "btl/err.h"

#include <errno.h>

const char *btl_strerror(int err)
{
    switch (err) {
    case BTL_OK:
        return "ok";
    case BTL_EINVAL:
        return "invalid argument";
    case BTL_ENOMEM:
        return "out of memory";
    case BTL_EIO:
        return "i/o error";
    case BTL_EDB:
        return "database error";
    case BTL_EBUS:
        return "bus error";
    case BTL_EPROTO:
        return "malformed message";
    case BTL_ECONFIG:
        return "configuration error";
    case BTL_ENOTFOUND:
        return "not found";
    case BTL_ETIMEDOUT:
        return "timed out";
    case BTL_EAGAIN:
        return "try again";
    case BTL_ETOOBIG:
        return "too big";
    case BTL_ECLOSED:
        return "closed";
    case BTL_EHTTP:
        return "http error";
    case BTL_ECONFLICT:
        return "conflict";
    case BTL_EPERM:
        return "permission denied";
    case BTL_EUNSUPPORTED:
        return "not supported";
    default:
        return "unknown error";
    }
}

int btl_err_from_errno(int e)
{
    switch (e) {
    case 0:
        return BTL_OK;
    case ENOMEM:
        return BTL_ENOMEM;
    case EINVAL:
        return BTL_EINVAL;
    case ENOENT:
        return BTL_ENOTFOUND;
    case ETIMEDOUT:
        return BTL_ETIMEDOUT;
    case EAGAIN:
        return BTL_EAGAIN;
    case EACCES:
    case EPERM:
        return BTL_EPERM;
    case E2BIG:
    case EFBIG:
    case ERANGE:
        return BTL_ETOOBIG;
    default:
        return BTL_EIO;
    }
}
