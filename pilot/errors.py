"""The one table of error codes, and the error type that carries one.

Job error codes are PanDA's numbers (1000-1399): the server and its monitoring know them.
Pilot exit codes are what the batch system or the factory's wrapper sees when the pilot ends.
"""

from __future__ import annotations

import signal
from enum import IntEnum


class ErrorCode(IntEnum):
    """A job failure, as reported to the dispatcher in pilotErrorCode."""

    GENERAL = 1008
    NO_LOCAL_SPACE = 1098
    STAGEIN_FAILED = 1099
    REPLICA_NOT_FOUND = 1100
    NO_SUCH_FILE = 1103
    WORKDIR_TOO_LARGE = 1104
    STDOUT_TOO_BIG = 1106
    SETUP_FAILURE = 1110
    STAGEOUT_FAILED = 1137
    PUT_SIZE_MISMATCH = 1139
    PUT_MD5_MISMATCH = 1141
    KILLED_BY_SERVER = 1144
    GET_MD5_MISMATCH = 1145
    TRF_DOWNLOAD_FAILED = 1149
    LOOPING = 1150
    LOOPING_STAGEIN = 1151
    LOOPING_STAGEOUT = 1152
    LOST_JOB_NOT_FINISHED = 1153
    LOST_JOB_LOG_REGISTRATION = 1154
    LOST_JOB_FILE_TRANSFER = 1155
    LOST_JOB_RECOVERY_FAILED = 1156
    RECOVERY_ATTEMPTS_EXHAUSTED = 1158
    NO_PROXY = 1163
    MISSING_OUTPUT = 1165
    SIZE_TOO_LARGE = 1168
    CATALOG_REGISTRATION = 1169
    GET_ADLER32_MISMATCH = 1171
    PUT_ADLER32_MISMATCH = 1172
    GET_SIZE_MISMATCH = 1175
    NO_SOFTWARE_DIR = 1186
    MKDIR = 1199
    KILL_SIGNAL = 1200
    SIGTERM = 1201
    SIGQUIT = 1202
    SIGSEGV = 1203
    SIGXCPU = 1204
    SIGBUS = 1206
    SIGUSR1 = 1207
    SIGINT = 1208
    MISSING_INSTALLATION = 1211
    OUT_OF_MEMORY = 1212
    REACHED_MAX_TIME = 1213
    FILE_EXISTS = 1221
    GLEXEC = 1226
    UNKNOWN_EXCEPTION = 1301
    CONVERSION_FAILURE = 1302
    PAYLOAD_FAILED = 1305
    NOT_DEFINED = 1311
    NOT_SAME_LENGTH = 1312
    UNKNOWN_CHECKSUM_TYPE = 1314
    EXCEEDED_MAX_WAIT = 1317
    COMMUNICATION_FAILURE = 1318
    LOGFILE_CREATION = 1320
    UNKNOWN_COPYTOOL = 1323
    NO_REMOTE_SPACE = 1333
    STAGEIN_AUTH = 1338
    EMPTY_OUTPUT = 1350
    BAD_FILE_NAME = 1371
    PREEMPTION = 1379
    STAGEOUT_AUTH = 1383


DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.GENERAL: "general pilot error",
    ErrorCode.NO_LOCAL_SPACE: "not enough local disk space",
    ErrorCode.STAGEIN_FAILED: "stage-in failed",
    ErrorCode.REPLICA_NOT_FOUND: "replica not found",
    ErrorCode.NO_SUCH_FILE: "no such file",
    ErrorCode.WORKDIR_TOO_LARGE: "work directory too large",
    ErrorCode.STDOUT_TOO_BIG: "payload stdout too big",
    ErrorCode.SETUP_FAILURE: "payload setup failed",
    ErrorCode.STAGEOUT_FAILED: "stage-out failed",
    ErrorCode.PUT_SIZE_MISMATCH: "size mismatch on output file",
    ErrorCode.PUT_MD5_MISMATCH: "md5 mismatch on output file",
    ErrorCode.KILLED_BY_SERVER: "killed by the server",
    ErrorCode.GET_MD5_MISMATCH: "md5 mismatch on input file",
    ErrorCode.TRF_DOWNLOAD_FAILED: "transformation could not be downloaded",
    ErrorCode.LOOPING: "looping job killed",
    ErrorCode.LOOPING_STAGEIN: "stuck in stage-in",
    ErrorCode.LOOPING_STAGEOUT: "stuck in stage-out",
    ErrorCode.LOST_JOB_NOT_FINISHED: "lost job was not finished",
    ErrorCode.LOST_JOB_LOG_REGISTRATION: "failed to register (ship) the log file of a lost job",
    ErrorCode.LOST_JOB_FILE_TRANSFER: "failed to move the output files of a lost job",
    ErrorCode.LOST_JOB_RECOVERY_FAILED: "the pilot could not recover the job",
    ErrorCode.RECOVERY_ATTEMPTS_EXHAUSTED: "reached the maximum number of recovery attempts",
    ErrorCode.NO_PROXY: "no valid proxy",
    ErrorCode.GLEXEC: "identity switch (glexec, uid) failed",
    ErrorCode.MISSING_OUTPUT: "output file missing",
    ErrorCode.SIZE_TOO_LARGE: "total input size too large",
    ErrorCode.CATALOG_REGISTRATION: "catalog registration failed",
    ErrorCode.GET_ADLER32_MISMATCH: "adler32 mismatch on input file",
    ErrorCode.PUT_ADLER32_MISMATCH: "adler32 mismatch on output file",
    ErrorCode.GET_SIZE_MISMATCH: "size mismatch on input file",
    ErrorCode.NO_SOFTWARE_DIR: "software directory does not exist",
    ErrorCode.MKDIR: "could not create directory",
    ErrorCode.KILL_SIGNAL: "killed by a signal",
    ErrorCode.SIGTERM: "killed by SIGTERM",
    ErrorCode.SIGQUIT: "killed by SIGQUIT",
    ErrorCode.SIGSEGV: "killed by SIGSEGV",
    ErrorCode.SIGXCPU: "killed by SIGXCPU",
    ErrorCode.SIGBUS: "killed by SIGBUS",
    ErrorCode.SIGUSR1: "killed by SIGUSR1",
    ErrorCode.SIGINT: "killed by SIGINT",
    ErrorCode.MISSING_INSTALLATION: "release not installed",
    ErrorCode.OUT_OF_MEMORY: "payload exceeded its memory limit",
    ErrorCode.REACHED_MAX_TIME: "reached the pilot's time limit",
    ErrorCode.FILE_EXISTS: "file already exists",
    ErrorCode.UNKNOWN_EXCEPTION: "unexpected pilot exception",
    ErrorCode.CONVERSION_FAILURE: "malformed value in job definition",
    ErrorCode.PAYLOAD_FAILED: "payload execution failed",
    ErrorCode.NOT_DEFINED: "required field missing in job definition",
    ErrorCode.NOT_SAME_LENGTH: "file lists of different lengths in job definition",
    ErrorCode.UNKNOWN_CHECKSUM_TYPE: "unknown checksum type",
    ErrorCode.EXCEEDED_MAX_WAIT: "exceeded maximum wait time",
    ErrorCode.COMMUNICATION_FAILURE: "communication with the server failed",
    ErrorCode.LOGFILE_CREATION: "log file creation failed",
    ErrorCode.UNKNOWN_COPYTOOL: "unknown copy tool",
    ErrorCode.NO_REMOTE_SPACE: "no space left at the storage",
    ErrorCode.STAGEIN_AUTH: "authentication failure during stage-in",
    ErrorCode.EMPTY_OUTPUT: "empty output file",
    ErrorCode.BAD_FILE_NAME: "illegal file name",
    ErrorCode.PREEMPTION: "job was preempted",
    ErrorCode.STAGEOUT_AUTH: "authentication failure during stage-out",
}

SIGNAL_CODES: dict[int, ErrorCode] = {
    signal.SIGTERM: ErrorCode.SIGTERM,
    signal.SIGQUIT: ErrorCode.SIGQUIT,
    signal.SIGSEGV: ErrorCode.SIGSEGV,
    signal.SIGXCPU: ErrorCode.SIGXCPU,
    signal.SIGBUS: ErrorCode.SIGBUS,
    signal.SIGUSR1: ErrorCode.SIGUSR1,
    signal.SIGINT: ErrorCode.SIGINT,
}


def signal_code(signum: int) -> ErrorCode:
    return SIGNAL_CODES.get(signum, ErrorCode.KILL_SIGNAL)


class ExitCode(IntEnum):
    """The pilot's own exit status (what the batch system and the wrapper see)."""

    OK = 0
    SITE_OFFLINE = 64
    GENERAL = 65
    MKDIR = 66
    CREDENTIALS = 68  # no proxy, or the server refused our identity/role (status 50/60/70)
    NO_SPACE = 69
    EXCEPTION = 70
    SERVER_COMMUNICATION = 79
    MAX_TIME = 81
    NO_JOBS = 82
    # a signal N ends the pilot with 128 + N


class PilotError(Exception):
    """A failure with a PanDA error code and a one-line diagnostic."""

    def __init__(self, code: ErrorCode, diag: str = "") -> None:
        self.code = ErrorCode(code)
        self.diag = one_line(diag or DESCRIPTIONS.get(self.code, self.code.name))
        super().__init__(f"{int(self.code)}: {self.diag}")


def one_line(text: str, limit: int = 250) -> str:
    """Squash a diagnostic to one printable line of at most `limit` characters."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
