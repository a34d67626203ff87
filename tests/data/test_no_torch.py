import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_shared_modules_and_service_import_without_torch():
    code = (
        # a finder that makes torch uninstallable, as in the service image. (sys.modules['torch'] = None
        # is not faithful: scipy's array-API helpers then do getattr(None, 'Tensor') and crash.)
        "import sys, importlib.abc\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import service, dnirecon.fastmri_io, dnirecon.subsample, dnirecon.metrics, dnirecon.fftc\n"
        "import dnirecon.foreground, dnirecon.tables, dnirecon.ismrmrd_io, service.mrd_server, service.mrd_client\n"
        "m = dnirecon.subsample.mask_for(4, seed='f.h5', width=64)\n"
        "assert not [k for k in sys.modules if k == 'torch' or k.startswith('torch.')], 'torch imported'\n"
        "r = dnirecon.metrics.evaluate_volume(*[__import__('numpy').ones((1, 16, 16))] * 2,\n"
        "                                    __import__('numpy').ones((1, 16, 16), bool))\n"
        "print('ok', int(m.sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
