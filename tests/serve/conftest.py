"""One tiny exported package (gla-tiny, prefill chunk 8) for the server tests."""
import pytest


@pytest.fixture(scope="session")
def pkg(tmp_path_factory):
    from edgelin.exporters.package import export_package
    from registry_helpers import zoo_model

    return export_package(zoo_model("gla-tiny"), tmp_path_factory.mktemp("serve") / "tiny", prefill_tokens=8)


@pytest.fixture(scope="session")
def trained_pkg(tmp_path_factory):
    """The shipped gla-1m (trained on Shakespeare: its replies are text, which a chat sends back as is)."""
    from edgelin.exporters.package import export_package
    from edgelin.models.loading import load_model

    return export_package(load_model("gla-1m").model, tmp_path_factory.mktemp("serve") / "gla-1m", prefill_tokens=8)
