"""``import torchlean`` loads neither torch, jax nor IPython; pytree registration waits.

Each test runs a fresh interpreter, so what was imported before is known exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torchlean

SRC = str(Path(torchlean.__file__).resolve().parents[1])


def run(code: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_numpy_contexts_import_no_optional_library():
    out = run(
        """
        import sys
        import numpy as np
        import torchlean
        from torchlean.runtime import pytree
        ctx = (
            torchlean.empty_context(dtype="float32")
            .register_variable("w", np.ones((2, 3), dtype=np.float32))
            .register_gradient("w", np.zeros((2, 3), dtype=np.float32))
            .accumulate_gradient("w", np.ones((2, 3), dtype=np.float32))
        )
        ctx.variable("w", (2, 3)); ctx.state_dict(); ctx.check(); repr(ctx)
        ctx.context_to_string()
        assert pytree.registered() == ()
        print(sorted(m for m in ("torch", "jax", "jaxlib", "IPython") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_importing_jax_after_torchlean_registers_the_context():
    out = run(
        """
        import sys
        import numpy as np
        import torchlean
        ctx = torchlean.empty_context().register_variable("w", np.ones(2))
        ctx = ctx.register_variable("w", np.zeros(2))
        import jax
        assert "torch" not in sys.modules
        from torchlean.runtime import pytree
        assert pytree.registered() == ("jax",), pytree.registered()
        out = jax.tree_util.tree_map(lambda x: x + 1, ctx)
        print(out.variable_names(), out.context_to_string())
        """
    )
    assert out.strip() == (
        "['w', 'w'] Context(vars: [w: [1.000000, 1.000000], w: [2.000000, 2.000000]], grads: [])"
    )


def test_importing_torch_after_torchlean_registers_the_context():
    out = run(
        """
        import sys
        import numpy as np
        import torchlean
        ctx = torchlean.empty_context().register_variable("w", np.ones(2))
        import torch
        import torch.utils._pytree as tp
        assert "jax" not in sys.modules
        from torchlean.runtime import pytree
        assert pytree.registered() == ("torch",), pytree.registered()
        out = tp.tree_map(lambda x: torch.tensor(x) * 3, ctx)
        print(out.context_to_string())
        """
    )
    assert out.strip() == "Context(vars: [w: [3.000000, 3.000000]], grads: [])"


def test_libraries_imported_before_torchlean_are_registered_at_once():
    out = run(
        """
        import sys
        import jax, torch
        import torchlean
        from torchlean.runtime import pytree
        from torchlean.runtime.pytree import _WATCHER
        assert pytree.registered() == ("jax", "torch")
        assert _WATCHER not in sys.meta_path  # nothing left to watch for
        ctx = torchlean.empty_context().register_variable("w", torch.ones(2))
        print(jax.tree_util.tree_structure(ctx).num_leaves)
        """
    )
    assert out.strip() == "1"


def test_the_watcher_leaves_other_imports_alone_and_goes_away():
    out = run(
        """
        import sys
        import torchlean
        from torchlean.runtime.pytree import _WATCHER
        import json, email.mime.text  # unrelated imports pass through
        assert _WATCHER in sys.meta_path
        import jax
        assert type(jax.__spec__.loader).__name__ == "SourceFileLoader"
        assert "exec_module" not in vars(jax.__spec__.loader)  # the loader is restored
        import torch
        assert _WATCHER not in sys.meta_path
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_explicit_registration_imports_what_it_registers():
    out = run(
        """
        import sys
        import torchlean
        from torchlean.runtime import pytree
        assert "jax" not in sys.modules
        print(pytree.register("jax"), pytree.register("jax"), "torch" in sys.modules)
        """
    )
    assert out.strip() == "('jax',) ('jax',) False"


def test_register_covers_an_import_the_watcher_missed():
    # One mechanism registers by itself (the import watcher); where another import hook
    # hid the import from it, pytree.register() is the documented way, and storing an
    # array registers nothing behind the user's back.
    out = run(
        """
        import sys
        import torchlean
        from torchlean.runtime import pytree
        pytree._WATCHER.uninstall()  # as if another import hook had hidden the import
        import jax, jax.numpy as jnp
        ctx = torchlean.empty_context().register_variable("w", jnp.ones(2))
        before = pytree.registered()
        pytree.register("jax")
        print(before, pytree.registered(), jax.tree_util.tree_structure(ctx).num_leaves)
        """
    )
    assert out.strip() == "() ('jax',) 1"
