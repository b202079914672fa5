"""The package's shape: imports point one way and sit at the top of modules, the
command line starts without TensorFlow, library messages speak library terms and
the CLI turns them into its flags, and TensorFlow's start-up lines stay off a
user's terminal."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import transfer
from transfer import cli as cli_module
from transfer.runs import prepare_run_dir
from transfer.startup_noise import is_noise

PACKAGE = Path(transfer.__file__).parent
# Heavy or optional libraries a module may import inside a function, on first use.
DEFERRABLE = {
    "tensorflow",
    "tensorflow_datasets",
    "keras",
    "sklearn",
    "matplotlib",
    "torch",
    "scipy",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "ai_edge_litert",
    "pandas",
}
COMMANDS = (
    "finetune",
    "evaluate",
    "predict",
    "embed",
    "probe",
    "export",
    "info",
    "weights",
    "lr-find",
    "tune",
    "audit",
    "report",
    "explain",
    "runs",
)


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path):
    """[(imported module, node, at module level)] of one source file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from package import submodule` imports the submodule.
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        else:
            continue
        found += [(name, node, id(node) in top_level) for name in names]
    return found


def _graph():
    graph = {}
    for name, path in MODULES.items():
        graph[name] = {
            imported
            for imported, _, _ in _imports(path)
            if imported in MODULES and imported != name
        }
    return graph


def test_imports_of_the_package_form_no_cycle():
    graph = _graph()
    # A package imports its own submodules to re-export them; they never import it.
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycle = stack[stack.index(imported) :] + [imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_layers_point_down():
    graph = _graph()
    for module, imported in graph.items():
        if module.startswith("transfer.models"):
            bad = {
                i
                for i in imported
                if i.split(".")[1] in ("data", "train", "report", "commands", "cli", "runs")
            }
            assert not bad, f"{module} imports {bad}"
        if module != "transfer.__main__":  # `python -m transfer` is the CLI's entry point
            assert "transfer.cli" not in imported, f"{module} imports the CLI"


# The code that knows the kinds of backbone (ResNet rows, keras.applications families) and
# builds or recognises each; everything else uses only the `Backbone` interface.
BACKBONE_MODULES = (
    "transfer.models.backbones",
    "transfer.models.architectures",
    "transfer.models.families",
    "transfer.models.resnet",
    "transfer.models.applications",
    "transfer.models.identify",
)
KIND_MODULES = BACKBONE_MODULES[:3]  # where the kinds are defined


def _kind_names():
    """(classes, questions): the classes of the kind modules, and their functions that ask
    whether a thing is of one kind (`is_...`) or which family a model is."""
    classes, questions = set(), set()
    for module in KIND_MODULES:
        for node in ast.parse(MODULES[module].read_text()).body:
            if isinstance(node, ast.ClassDef):
                classes.add(node.name)
            elif isinstance(node, ast.FunctionDef) and (
                node.name.startswith("is_") or "family_of" in node.name
            ):
                questions.add(node.name)
    return classes, questions


def _called_name(node):
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def _mentions(node, names):
    return any(
        (isinstance(n, ast.Name) and n.id in names)
        or (isinstance(n, ast.Attribute) and n.attr in names)
        for n in ast.walk(node)
    )


def test_no_caller_outside_the_backbone_code_asks_which_kind_of_backbone_it_holds():
    classes, questions = _kind_names()
    assert {"Backbone", "Architecture", "Family"} <= classes
    for name, path in MODULES.items():
        if name in BACKBONE_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call):
                called = _called_name(node)
                assert called not in questions, f"{where} asks which kind of backbone: {called}"
                if called in ("isinstance", "issubclass") and len(node.args) == 2:
                    assert not _mentions(node.args[1], classes), (
                        f"{where} checks the class of a backbone; use the Backbone interface"
                    )
            elif isinstance(node, ast.Compare):  # type(x) is Family, type(x) == Architecture
                assert not _mentions(node, classes), (
                    f"{where} compares with a backbone class; use the Backbone interface"
                )


def test_no_command_imports_another():
    # A step two commands share belongs to the library (train/'s run, data/, runs).
    graph = _graph()
    for module, imported in graph.items():
        if module.startswith("transfer.commands."):
            others = {i for i in imported if i.startswith("transfer.commands.")}
            assert not others, f"{module} imports {others}"


@pytest.mark.heavy
def test_training_has_one_home():
    # The recipe's steps live in transfer.train; a command only calls them.
    graph = _graph()
    for command in ("transfer.commands.finetune", "transfer.commands.lr_find"):
        assert "transfer.train.run" in graph[command], command
    assert not any(name.startswith("transfer.train.phases") for name in MODULES)


def test_own_modules_are_imported_at_the_top_and_only_heavy_ones_later():
    for name, path in MODULES.items():
        for imported, node, at_top in _imports(path):
            if at_top:
                root = imported.split(".")[0]
                assert root not in {"tensorflow", "keras"} or name == "transfer.lazy", (
                    f"{name}:{node.lineno} imports {imported} at load time; use transfer.lazy"
                )
                continue
            assert imported.split(".")[0] in DEFERRABLE, (
                f"{name}:{node.lineno} imports {imported} inside a function"
            )


def test_help_of_every_command_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from transfer.cli import cli\n"
        f"for args in [['--help']] + [[c, '--help'] for c in {COMMANDS!r}]:\n"
        "    result = CliRunner().invoke(cli, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "    assert 'Usage: ' in result.output\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'sklearn', 'matplotlib') "
        "if m in sys.modules)\n"
        "print('loaded:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded: []"


@pytest.mark.parametrize(
    "message,command,expected",
    [
        (
            "out=runs/a is not empty. Choose another folder or pass overwrite=True to replace it.",
            "finetune",
            "--out runs/a is not empty. Choose another folder or pass --overwrite to replace it.",
        ),
        (
            "Unknown group: fine_tune_from='conv9'.",
            "finetune",
            "Unknown group: --fine-tune-from 'conv9'.",
        ),
        (
            "pass weights=PATH to a file, or weights=None.",
            "finetune",
            "pass --weights PATH to a file, or --weights none.",
        ),
        (
            "features were cached (cache_features=False turns it off)",
            "finetune",
            "features were cached (--no-cache turns it off)",
        ),
        (
            "pass weights_dir=DIR (or set TRANSFER_WEIGHTS_DIR=DIR)",
            "weights",
            "pass --weights-dir DIR (or set TRANSFER_WEIGHTS_DIR=DIR)",
        ),
        ("a file with include_top=False", "weights", "a file with --notop"),
        (
            "out=x.h5 exists; head_epochs=3 is not an option here.",
            "export",
            "--out x.h5 exists; head_epochs=3 is not an option here.",
        ),
    ],
)
def test_library_arguments_become_the_commands_flags(message, command, expected):
    params = cli_module.cli.commands[command].params
    assert cli_module.flag_names(message, params) == expected


def test_python_callers_get_arguments_not_flags(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    with pytest.raises(transfer.InvalidArgumentError) as info:
        prepare_run_dir(tmp_path / "run")
    assert "overwrite=True" in str(info.value) and "--" not in str(info.value)


# Lines TensorFlow 2.21 printed at start-up on this project's machines.
STARTUP_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795637542.696293    4484 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors.",
    "I0000 00:00:1795637542.696803    4484 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "I0000 00:00:1795637381.357957    4198 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
    "E0000 00:00:1795637547.427877    4484 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, "
    "output_inference_type: FLOAT32",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
]
KEPT_LINES = [
    "Error: --data ./flowers does not exist.",
    "Warning: Skipped a/b.png: empty file (0 bytes)",
    "W0000 00:00:1795637547.427877    4484 op_level_cost_estimator.cc:699] Error in "
    "PredictCost() for the op: Conv2D",
    "E0000 00:00:1795637547.427877    4484 cuda_dnn.cc:535] Loaded runtime CuDNN library: 8.1 "
    "but source was compiled with: 8.6",
    "Traceback (most recent call last):",
]


def test_startup_lines_are_noise_and_real_messages_are_not():
    for line in STARTUP_LINES:
        assert is_noise(line.encode() + b"\n"), line
    for line in KEPT_LINES:
        assert not is_noise(line.encode() + b"\n"), line


@pytest.mark.heavy
def test_the_command_line_keeps_tensorflow_start_up_lines_off_stderr():
    done = subprocess.run(
        [sys.executable, "-m", "transfer", "info", "--depth", "50", "--image-size", "32"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ResNet50 (depth 50")
    assert done.stderr == ""
    bad = subprocess.run(
        [sys.executable, "-m", "transfer", "info", "--depth", "34"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert (
        bad.stderr == "Error: Unsupported ResNet depth: 34. Expected one of 50, 101, 152. "
        "For a smaller model, pass another family: --arch mobilenet_v3_small or --arch "
        "efficientnet_b0, for example.\n"
    )
