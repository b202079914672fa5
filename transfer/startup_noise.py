"""Keeps TensorFlow's start-up lines off the terminal of a command-line user.

TensorFlow's C++ side logs through absl before absl is initialised, so
TF_CPP_MIN_LOG_LEVEL does not reach those lines: "All log messages before
absl::InitializeLog()", "Could not find cuda drivers", the CPU-feature notice and,
on a machine without a GPU, "failed call to cuInit". They go straight to file
descriptor 2. `filter_stderr` puts a pipe there and passes on every other line,
real warnings and errors included. oneDNN's notes on the data types it leaves to
Eigen (`util.cc] oneDNN supports DT_HALF only on platforms with AVX-512`), printed
at run time, are of the same kind.

`open_standard_streams` first gives a closed standard file descriptor a stand-in, so
that no file opened later (the filter's own copy of stderr included) takes number 0,
1 or 2 and receives what was meant for the terminal.
"""

import atexit
import contextlib
import fcntl
import os
import re
import sys
import threading

NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|I\d{4} \S+\s+\d+ \S+\.cc:\d+\]"  # absl INFO lines: never for users
    rb"|To enable the following instructions: .* rebuild TensorFlow"  # cpu_feature_guard's 2nd line
    # the TFLite converter's and interpreter's notes on every export and evaluation
    rb"|fully_quantize: \d+, inference_type: \d+, input_inference_type: "
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    rb"|[EW]\d{4} \S+\s+\d+ (cuda_platform|cuda_dnn|cuda_fft|cuda_blas"
    rb"|computation_placer)\.cc:\d+\] (failed call to cuInit|Unable to register"
    rb"|computation placer already registered)"
    # oneDNN leaves float16 and uint8 ops to Eigen on CPUs without AVX-512: nothing to act on
    rb"|E\d{4} \S+\s+\d+ util\.cc:\d+\] oneDNN supports DT_\w+ only on platforms with)"
)


def is_noise(line):
    return bool(NOISE.match(line))


def open_standard_streams():
    """Give each closed standard file descriptor (0, 1, 2) a stand-in: /dev/null for
    reading, so that a write to a closed stdout or stderr still fails (EBADF) rather
    than landing in whatever file the process opens next. Returns the closed ones;
    for a closed stdout, `sys.stdout` becomes a stream whose writes fail."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        stand_in = os.open(os.devnull, os.O_RDONLY)
        if stand_in != fd:
            os.dup2(stand_in, fd)
            os.close(stand_in)
    if 1 in closed and sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115  (its writes fail: EBADF)
    return closed


def filter_stderr():
    """Route file descriptor 2 through a filter until the process exits."""
    try:
        # above 2: with a standard descriptor closed, os.dup would take its number
        real_stderr = fcntl.fcntl(2, fcntl.F_DUPFD_CLOEXEC, 3)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:  # no file descriptor 2 to filter (an embedding host)
        return

    def pump():
        with os.fdopen(read_end, "rb") as source:
            for line in source:
                if not is_noise(line):
                    # a closed stderr loses the line; the pipe is still drained
                    with contextlib.suppress(OSError):
                        os.write(real_stderr, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore():
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # closes the pipe's last writer: the pump reads to the end
        thread.join(timeout=5)

    atexit.register(restore)
