"""`meson install` installs the command, the library, its header and a
casfs.pc that a program can build against."""
import json
import os
import subprocess

from conftest import BUILD


def test_meson_install_gives_a_usable_library(tmp_path):
    dest = tmp_path / "dest"
    env = dict(os.environ, DESTDIR=str(dest))
    subprocess.run(["meson", "install", "-C", str(BUILD), "--quiet", "--no-rebuild"],
                   check=True, env=env, capture_output=True)
    files = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() or p.is_symlink()}
    assert any(f.endswith("bin/casfs") for f in files), files
    assert any(f.endswith("include/casfs.h") for f in files), files
    pcs = [f for f in files if f.endswith("pkgconfig/casfs.pc")]
    assert pcs, files
    libdirs = {os.path.dirname(dest / f) for f in files if "/libcasfs.so" in f}
    assert libdirs, files

    prog = tmp_path / "prog.c"
    prog.write_text(
        '#include <casfs.h>\n#include <stdio.h>\n'
        'int main(int c, char **v) { casfs_root *r; casfs_store *s; char h[CASFS_HEX_MAX];\n'
        '  (void)c; if (casfs_root_open(&r, v[1], CASFS_ROOT_CREATE)) return 1;\n'
        '  if (casfs_store_create(r, "x", CASFS_SHA256, NULL, 0)) return 2;\n'
        '  if (casfs_store_open(&s, r, "x")) return 3;\n'
        '  if (casfs_blob_put(s, "hi", 2, h) != 0) return 4;\n'
        '  puts(h); casfs_store_free(s); casfs_root_free(r); return 0; }\n')
    pcdir = os.path.dirname(dest / pcs[0])
    penv = dict(os.environ, PKG_CONFIG_PATH=pcdir, PKG_CONFIG_SYSROOT_DIR=str(dest))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "casfs"], check=True, env=penv,
                           capture_output=True, text=True).stdout.split()
    # A sanitizer build's library needs the program built the same way.
    opts = json.loads(subprocess.run(["meson", "introspect", str(BUILD), "--buildoptions"], check=True,
                                     capture_output=True, text=True).stdout)
    sanitize = next(o["value"] for o in opts if o["name"] == "b_sanitize")
    if sanitize != "none":
        flags = ["-fsanitize=" + sanitize] + flags
    exe = tmp_path / "prog"
    subprocess.run(["cc", "-Wall", "-Werror", str(prog), "-o", str(exe)] + flags, check=True)
    out = subprocess.run([str(exe), str(tmp_path / "root")], check=True, capture_output=True, text=True,
                         env=dict(os.environ, LD_LIBRARY_PATH=":".join(libdirs))).stdout.strip()
    # sha256("hi")
    assert out == "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"
