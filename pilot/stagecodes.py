"""The PanDA error code of a failed transfer: by direction, the mover's Failure and the checksum's kind."""

from __future__ import annotations

from pilot.errors import ErrorCode
from sitemovers.base import Direction, Failure, TransferError

CODES: dict[Direction, dict[Failure, ErrorCode]] = {
    Direction.IN: {
        Failure.NOT_FOUND: ErrorCode.REPLICA_NOT_FOUND,
        Failure.SIZE_MISMATCH: ErrorCode.GET_SIZE_MISMATCH,
        Failure.NO_SPACE: ErrorCode.NO_LOCAL_SPACE,
        Failure.TIMEOUT: ErrorCode.LOOPING_STAGEIN,
        Failure.AUTH: ErrorCode.STAGEIN_AUTH,
        Failure.SETUP: ErrorCode.SETUP_FAILURE,
    },
    Direction.OUT: {
        Failure.SIZE_MISMATCH: ErrorCode.PUT_SIZE_MISMATCH,
        Failure.NO_SPACE: ErrorCode.NO_REMOTE_SPACE,
        Failure.TIMEOUT: ErrorCode.LOOPING_STAGEOUT,
        Failure.AUTH: ErrorCode.STAGEOUT_AUTH,
        Failure.EXISTS: ErrorCode.FILE_EXISTS,
        Failure.SETUP: ErrorCode.SETUP_FAILURE,
        Failure.CATALOG: ErrorCode.CATALOG_REGISTRATION,
    },
}
CHECKSUM_CODES = {
    (Direction.IN, "adler32"): ErrorCode.GET_ADLER32_MISMATCH,
    (Direction.IN, "md5"): ErrorCode.GET_MD5_MISMATCH,
    (Direction.OUT, "adler32"): ErrorCode.PUT_ADLER32_MISMATCH,
    (Direction.OUT, "md5"): ErrorCode.PUT_MD5_MISMATCH,
}
FAILED = {Direction.IN: ErrorCode.STAGEIN_FAILED, Direction.OUT: ErrorCode.STAGEOUT_FAILED}


def error_code(direction: Direction | str, exc: TransferError) -> ErrorCode:
    direction = Direction(direction)
    if exc.failure is Failure.CHECKSUM_MISMATCH:
        return CHECKSUM_CODES[(direction, exc.checksum_kind or "adler32")]
    return CODES[direction].get(exc.failure, FAILED[direction])
