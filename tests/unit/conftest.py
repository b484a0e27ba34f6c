"""Unit tests run with a home of their own: the production inventory's control-side Milvus secret
files (group_data/all.py: ~/.config/gpufleet/milvus-*-password) exist there, with random values,
so inventory/prod.py validates as it does on a control host set up as the README says."""

import secrets

import pytest


@pytest.fixture(scope="session", autouse=True)
def _home_with_milvus_secrets(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    config = home / ".config" / "gpufleet"
    config.mkdir(parents=True)
    for name in ("milvus-root-password", "milvus-app-password"):
        (config / name).write_text(secrets.token_hex(16) + "\n")
        (config / name).chmod(0o600)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        yield home


@pytest.fixture
def stand_in_docker(tmp_path):
    """Start a stand-in Docker daemon for this test: ``stand_in_docker(routes, cli=...)`` ->
    :class:`tests.unit.docker_api_docs.StandInDocker`, stopped after the test."""
    from .docker_api_docs import StandInDocker

    started = []

    def start(routes: dict, **kwargs) -> StandInDocker:
        started.append(StandInDocker(tmp_path, routes, **kwargs))
        return started[-1]

    yield start
    for docker in started:
        docker.close()
