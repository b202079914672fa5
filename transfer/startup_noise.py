"""Keeps TensorFlow's start-up lines off the terminal of a command-line user.

TensorFlow's C++ side logs through absl before absl is initialised, so
TF_CPP_MIN_LOG_LEVEL does not reach those lines: "All log messages before
absl::InitializeLog()", "Could not find cuda drivers", the CPU-feature notice and,
on a machine without a GPU, "failed call to cuInit". They go straight to file
descriptor 2. `filter_stderr` puts a pipe there and passes on every other line,
real warnings and errors included.
"""

import atexit
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
    rb"|computation placer already registered))"
)


def is_noise(line):
    return bool(NOISE.match(line))


def filter_stderr():
    """Route file descriptor 2 through a filter until the process exits."""
    try:
        real_stderr = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:  # no file descriptor 2 to filter (an embedding host)
        return

    def pump():
        with os.fdopen(read_end, "rb") as source:
            for line in source:
                if not is_noise(line):
                    os.write(real_stderr, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore():
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # closes the pipe's last writer: the pump reads to the end
        thread.join(timeout=5)

    atexit.register(restore)
