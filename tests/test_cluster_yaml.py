"""cluster.yaml is a valid Ray cluster-launcher config (checked against the schema shipped inside ray)."""
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import ROOT


def test_cluster_yaml_validates_against_rays_schema():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))
    assert cfg["head_node_type"] in cfg["available_node_types"]
    workers = [t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert all(isinstance(v, int) for t in cfg["available_node_types"].values() for v in t["resources"].values())
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}


def test_an_invalid_cluster_yaml_is_rejected():
    import pytest

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5  # node types take integers only
    with pytest.raises(Exception):  # noqa: B017 - Ray's validator raises whichever error its schema library uses
        validate_config(prepare_config(cfg))
