"""launch/rover.launch.py checked without a launch runtime (test_launch_run.py runs it for real).

The file is parsed with ``ast``, never imported. Every executable it starts must be installed, every
parameter file it names must exist, parse and hold ``ros__parameters`` for the node, every parameter in
those files (and every override in the launch file) must be one the node declares, the RViz config must
parse and show the detector's annotated image, and every argument must be declared, used and described.
"""

import ast
import dataclasses
import importlib
import subprocess
import sys
from xml.etree import ElementTree

import pytest
import yaml
from conftest import EXECUTABLES, REPO_ROOT, RosProbe, start_executable, stop_process

LAUNCH = REPO_ROOT / "launch" / "rover.launch.py"
CONFIG = REPO_ROOT / "config"
EXTERNAL_PACKAGES = {("camera_ros", "camera_node"), ("v4l2_camera", "v4l2_camera_node"), ("rviz2", "rviz2")}
ALLOWED_IMPORTS = ("launch", "launch_ros", "ament_index_python", "difflib", "os", "yaml")
# Reading a parameters file as the nodes do, and checking a model file as the detector will; they load no torch.
LIGHT_SSD_ROS_MODULES = ("ssd_ros.cli", "ssd_ros.vision.model_file")
NODE_CALLS = ("Node", "_required")  # _required(...) is the launch file's Node with on_exit=Shutdown
ALWAYS_DECLARED = {"use_sim_time"}  # rclpy declares it on every node


def _call_name(node):
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


class LaunchModel:
    """What the launch file uses, read from its syntax tree."""

    def __init__(self, path):
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.constants = {
            target.id: node.value
            for node in self.tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        calls = [node for node in ast.walk(self.tree) if isinstance(node, ast.Call)]
        self.arguments = {}
        for call in (c for c in calls if _call_name(c) == "DeclareLaunchArgument"):
            keywords = {kw.arg: self.value(kw.value) for kw in call.keywords}
            self.arguments[self.value(call.args[0])] = keywords
        self.configurations = self._configurations(calls)
        self.config_files = {self.value(c.args[0]) for c in calls if _call_name(c) == "_config"}
        self.nodes = [
            self._node(c)
            for c in calls
            if _call_name(c) in NODE_CALLS and any(keyword.arg == "package" for keyword in c.keywords)
        ]
        self.imports = [
            (n.module if isinstance(n, ast.ImportFrom) else alias.name)
            for n in ast.walk(self.tree)
            if isinstance(n, (ast.Import, ast.ImportFrom))
            for alias in n.names
        ]

    def _configurations(self, calls):
        """LaunchConfiguration names: literal ones, and literals passed to helpers that forward a parameter.

        A helper forwards when it hands a parameter to LaunchConfiguration or to another forwarding helper.
        """
        names = set()
        forwarding = {"LaunchConfiguration": 0}  # function name -> index of the parameter that names an argument
        functions = [n for n in ast.walk(self.tree) if isinstance(n, ast.FunctionDef)]
        found = True
        while found:  # until no helper is added: a helper may forward through another one defined below it
            found = False
            for function in (f for f in functions if f.name not in forwarding):
                parameters = [a.arg for a in function.args.args]
                for call in (c for c in ast.walk(function) if isinstance(c, ast.Call)):
                    index = forwarding.get(_call_name(call))
                    if index is not None and isinstance(call.args[index], ast.Name):
                        name = call.args[index].id
                        assert name in parameters, f"{_call_name(call)}({name}) not resolvable"
                        forwarding[function.name], found = parameters.index(name), True
                        break
        for call in calls:
            index = forwarding.get(_call_name(call))
            if index is not None and not isinstance(call.args[index], ast.Name):
                names.add(self.value(call.args[index]))
        return names

    def value(self, node):
        """A literal, or a module-level constant by name."""
        if isinstance(node, ast.Name) and node.id in self.constants:
            return self.value(self.constants[node.id])
        return ast.literal_eval(node)

    def _node(self, call):
        keywords = {kw.arg: kw.value for kw in call.keywords}
        node = {key: self.value(keywords[key]) for key in ("package", "executable", "name")}
        node["params_files"], node["overrides"] = [], set()
        for item in getattr(keywords.get("parameters"), "elts", []):
            if isinstance(item, ast.Call) and _call_name(item) == "_config":
                node["params_files"].append(self.value(item.args[0]))
            elif isinstance(item, ast.Dict):
                node["overrides"] |= {self.value(key) for key in item.keys}
            elif isinstance(item, ast.Name):  # a dict built just above the Node call
                assigned = [
                    n.value
                    for n in ast.walk(self.tree)
                    if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == item.id for t in n.targets)
                ]
                assert len(assigned) == 1 and isinstance(assigned[0], ast.Dict), f"cannot follow {item.id}"
                node["overrides"] |= {self.value(key) for key in assigned[0].keys}
                node["overrides"] |= {
                    n.targets[0].slice.value
                    for n in ast.walk(self.tree)
                    if isinstance(n, ast.Assign)
                    and isinstance(n.targets[0], ast.Subscript)
                    and getattr(n.targets[0].value, "id", None) == item.id
                }
        return node


@pytest.fixture(scope="module")
def launch():
    return LaunchModel(LAUNCH)


def _entry_points():
    """console_scripts of setup.py: executable name -> module."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    scripts = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    for line in ast.literal_eval(value):
                        name, target = (part.strip() for part in line.split("="))
                        scripts[name] = target.split(":")[0]
    return scripts


def _running_node_parameters(executable, node_name, params_file, tmp_path):
    """Parameter names a node declares, asked from the running node (for modules without a PARAMETERS table)."""
    from rcl_interfaces.srv import ListParameters

    log = tmp_path / f"{executable}.log"
    service = f"/{node_name}/list_parameters"
    proc = start_executable(executable, "--params-file", str(params_file), log_path=log)
    try:
        with RosProbe("launch_file_test") as probe:

            def up():
                assert proc.poll() is None, f"{executable} exited: {log.read_text()}"
                return service in dict(probe.node.get_service_names_and_types())

            probe.spin_until(up, 30.0, f"{executable} to come up")
            return set(probe.call(ListParameters, service, ListParameters.Request()).result.names)
    finally:
        stop_process(proc)


def declared_parameters(executable, node_name, params_file, tmp_path):
    module = importlib.import_module(_entry_points()[executable])
    table = getattr(module, "PARAMETERS", None)
    if table is not None:
        return set(table) | ALWAYS_DECLARED
    return _running_node_parameters(executable, node_name, params_file, tmp_path) | ALWAYS_DECLARED


def test_launch_file_compiles_and_imports_only_launch_packages(launch):
    compile(LAUNCH.read_text(), str(LAUNCH), "exec")
    assert launch.imports, "no imports found"
    for module in launch.imports:
        allowed = module.split(".")[0] in ALLOWED_IMPORTS or module in LIGHT_SSD_ROS_MODULES
        assert allowed, f"launch file imports {module}"
    assert "generate_launch_description" in {f.name for f in launch.tree.body if isinstance(f, ast.FunctionDef)}


def test_the_ssd_ros_modules_the_launch_file_imports_load_no_torch():
    """Launching must not pay for (or need) torch in the launch process itself."""
    code = f"import sys; import {', '.join(LIGHT_SSD_ROS_MODULES)}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"


def test_every_argument_is_described_defaulted_and_used(launch):
    assert {"model_path", "device", "target_class", "image_topic", "compressed", "camera", "base", "rviz"} <= set(
        launch.arguments
    ) and {"namespace", "use_sim_time"} <= set(launch.arguments)
    for name, keywords in launch.arguments.items():
        description = keywords.get("description", "")
        assert len(description) >= 15, f"argument {name} needs a real description, has {description!r}"
        assert "default_value" in keywords, f"argument {name} has no default"
    assert launch.configurations == set(launch.arguments), "LaunchConfiguration names must match the arguments"


def test_choice_defaults_are_valid(launch):
    assert launch.arguments["camera"]["default_value"] in ("none", *launch.value(launch.constants["CAMERAS"]))
    assert launch.arguments["base"]["default_value"] in launch.value(launch.constants["BASES"])
    for name in ("rviz", "detector", "follower", "twist_stamped"):
        assert launch.arguments[name]["default_value"] in ("true", "false"), name
    # Empty is "not given": the detector's parameters files (detector_params too) keep their value.
    for name in ("compressed", "autostart", "use_sim_time", "device", "image_topic"):
        assert launch.arguments[name]["default_value"] == "", name


def test_every_executable_exists(launch):
    packages = {(node["package"], node["executable"]) for node in launch.nodes}
    ours = {executable for package, executable in packages if package == "ssd_ros"}
    assert ours == {"detector", "follower", "picar_base"}
    for executable in ours:
        assert (EXECUTABLES / executable).is_file(), f"{executable} not installed in {EXECUTABLES}"
        assert executable in _entry_points()
    assert packages - {("ssd_ros", e) for e in ours} <= EXTERNAL_PACKAGES


def test_config_files_exist_parse_and_are_installed(launch):
    setup = (REPO_ROOT / "setup.py").read_text()
    assert 'glob("launch/*.py")' in setup
    assert launch.config_files >= {"detector.yaml", "follower.yaml", "picar_base.yaml", "rover.rviz"}
    for name in launch.config_files:
        path = CONFIG / name
        assert path.is_file(), f"launch file uses config/{name}, which does not exist"
        assert f'glob("config/*{path.suffix}")' in setup, f"setup.py does not install config/*{path.suffix}"
        if path.suffix == ".xml":
            assert ElementTree.parse(path).getroot() is not None
        else:  # parameter files and the RViz config are YAML
            assert yaml.safe_load(path.read_text()), f"config/{name} is empty"


def test_rviz_config_shows_annotated_image(launch):
    rviz = yaml.safe_load((CONFIG / "rover.rviz").read_text())
    manager = rviz["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"]
    images = [d for d in manager["Displays"] if d["Class"] == "rviz_default_plugins/Image" and d["Enabled"]]
    assert images, "no enabled Image display"
    topic = images[0]["Topic"]
    # detector_node publishes "image_annotated" relative to its namespace (none by default).
    assert topic["Value"] == "/image_annotated"
    assert topic["Reliability Policy"] in ("Best Effort", "Reliable")


@pytest.mark.parametrize("executable", ["detector", "follower", "picar_base"])
def test_parameter_files_match_declared_parameters(launch, executable, tmp_path):
    [node] = [n for n in launch.nodes if n["package"] == "ssd_ros" and n["executable"] == executable]
    assert node["params_files"], f"{executable} takes no parameter file"
    in_file = set()
    for name in node["params_files"]:
        path = CONFIG / name
        if not path.is_file():
            pytest.fail(f"config/{path.name} missing (loaded for the {executable} node)")
        data = yaml.safe_load(path.read_text())
        keys = [key for key in data if key in ("/**", node["name"], f"/{node['name']}")]
        assert keys, f"config/{path.name} has no section for node {node['name']} (or /**)"
        for key in keys:
            assert "ros__parameters" in data[key], f"config/{path.name}: {key} lacks ros__parameters"
            in_file |= set(data[key]["ros__parameters"])
    declared = declared_parameters(executable, node["name"], CONFIG / node["params_files"][-1], tmp_path)
    assert in_file - declared == set(), f"{node['params_files']} set parameters {executable} does not declare"
    assert node["overrides"] - declared == set(), f"launch file overrides undeclared parameters of {executable}"


def test_the_rover_geometry_is_set_once_for_follower_and_base(launch):
    """The follower plans turns with the wheelbase and steering limit the base driver applies: one file sets them.

    config/rover.yaml holds RoverGeometry's fields and nothing else, both nodes load it first, and no node's own
    file sets any of them again (where two files could disagree).
    """
    from ssd_ros.control.geometry import RoverGeometry

    geometry = {f.name for f in dataclasses.fields(RoverGeometry)}
    rover = yaml.safe_load((CONFIG / "rover.yaml").read_text())["/**"]["ros__parameters"]
    assert set(rover) == geometry
    for executable in ("follower", "picar_base"):
        [node] = [n for n in launch.nodes if n["package"] == "ssd_ros" and n["executable"] == executable]
        assert node["params_files"][0] == "rover.yaml", f"{executable} must load config/rover.yaml first"
        assert not node["overrides"] & geometry, f"the launch file overrides the rover's geometry for {executable}"
    for path in CONFIG.glob("*.yaml"):
        if path.name != "rover.yaml":
            sections = yaml.safe_load(path.read_text()).values()
            for section in sections:
                again = set(section.get("ros__parameters", {})) & geometry
                assert not again, f"config/{path.name} sets {sorted(again)} again: they belong to config/rover.yaml"
