"""Every test runs offline, in quick mode, with a data folder of its own."""
import pytest


@pytest.fixture(autouse=True)
def offline_quick_environment(monkeypatch, tmp_path_factory):
    monkeypatch.setenv('D2L_VIT_OFFLINE', '1')
    monkeypatch.setenv('D2L_VIT_QUICK', '1')
    monkeypatch.setenv('D2L_VIT_DATA', str(tmp_path_factory.mktemp('data')))
