"""What an image holds, measured from inside it (run with the image's Python; standard library only).

Prints one JSON object: python (version), user (uid), packages (`pip freeze` lines from the
distributions' metadata, so an image without pip is measured the same way), tools (compilers and
package managers on PATH) and leftovers (build secrets or pip settings that reached the image).
"""

import importlib.metadata
import json
import os
import platform
import shutil

TOOLS = ("gcc", "cc", "c++", "g++", "clang", "make", "pip", "pip3", "apt", "apt-get", "dpkg")
LEFTOVERS = ("/etc/pip.conf", "/run/secrets/pip.conf", "/run/secrets/ca-bundle", "/root/.config/pip/pip.conf")

packages = sorted({f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()},
                  key=str.lower)
print(json.dumps({
    "python": platform.python_version(),
    "user": os.getuid(),
    "packages": packages,
    "tools": {t: shutil.which(t) for t in TOOLS if shutil.which(t)},
    "leftovers": [p for p in LEFTOVERS if os.path.exists(p)]
                 + [k for k in os.environ if k.startswith("PIP_") and k not in ("PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_CACHE_DIR")],
}))
