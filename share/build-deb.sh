#!/usr/bin/env bash
# Build avtool's Debian package from this checkout: dist/avtool_<version>_<arch>.deb, then
#   apt install ./dist/avtool_*.deb
#
#   bash share/build-deb.sh                 build; as root, installs the build tools when missing
#   bash share/build-deb.sh --lintian       and run lintian on it (fails on an error or warning)
#   ... --version V                         Debian version V, not the one of avtool/__init__.py
#   ... --out DIR                           the .deb goes to DIR (default: dist/)
#
# Two steps. Only the first uses the network: pip downloads the pinned wheels
# (debian/requirements.txt) and pyproject's build backend into build/deb-wheels, a cache kept
# between builds. Then the tree is copied to build/deb/ with a generated debian/changelog, and
# dpkg-buildpackage builds there, offline, from those wheels (debian/rules). The package needs
# no network to install. Layout and choices: debian/README.Debian.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/dist
version=""
lint=""
wheels=$here/build/deb-wheels
work=$here/build/deb
say() { printf 'build-deb: %s\n' "$*" >&2; }
die() { printf 'build-deb: %s\n' "$*" >&2; exit 1; }

while (($#)); do
  case $1 in
    --version) version=${2:?--version needs a Debian version}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --lintian) lint=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | cut -c3-; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

tools=(debhelper dh-python dpkg-dev python3-pip groff-base)
[[ -n $lint ]] && tools+=(lintian)
missing=()
for p in "${tools[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || die "missing build tools: ${missing[*]} (apt-get install them, or run me as root)"
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >&2 || { apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2; }
fi

# The one version (avtool/__init__.py), in Debian's order: 0.1.0.dev0 -> 0.1.0~dev0 (before
# 0.1.0), 1.0rc1 -> 1.0~rc1, 1.0.post1 -> 1.0+post1.
if [[ -z $version ]]; then
  version=$(/usr/bin/python3 - "$here/avtool/__init__.py" <<'EOF'
import re, sys
v = re.search(r'^__version__ = "([^"]+)"', open(sys.argv[1]).read(), re.M)[1]
v = re.sub(r"[.]?(dev|a|b|rc)(\d*)", r"~\1\2", v).replace(".post", "+post")
print(v)
EOF
)
fi
[[ $version =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "not a Debian version for a native package: $version"

# 1. the wheels (network). /usr/bin/python3: the compiled ones must fit the Python that runs them.
mkdir -p "$wheels"
backend=$(cd "$here" && /usr/bin/python3 -c \
  'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
say "fetching wheels into ${wheels#"$here"/}"
# shellcheck disable=SC2086
/usr/bin/python3 -m pip download --quiet --disable-pip-version-check --no-input \
  --only-binary :all: --dest "$wheels" -r "$here/debian/requirements.txt" $backend wheel 2>&1 |
  { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2

# 2. a copy of the tree (what git tracks, plus new files it does not ignore), built offline
src=$work/avtool-$version
rm -rf "$work"
mkdir -p "$src"
if git -C "$here" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$here" && git ls-files -z --cached --others --exclude-standard |
     while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done |
     tar --null -T - -cf -) | tar -xf - -C "$src"
  commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
  dirty=$(git -C "$here" status --porcelain 2>/dev/null | grep -q . && echo " with local changes" || true)
  origin="commit $commit$dirty"
  when=$(git -C "$here" log -1 --format=%ct 2>/dev/null || date +%s)
else
  (cd "$here" && tar --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist -cf - .) |
    tar -xf - -C "$src"
  origin="a source tree"
  when=$(date +%s)
fi
maintainer=$(sed -n 's/^Maintainer: //p' "$src/debian/control")
cat > "$src/debian/changelog" <<EOF
avtool ($version) unstable; urgency=medium

  * Built by share/build-deb.sh from $origin.
  * avtool's own changes: /usr/share/doc/avtool/CHANGELOG.md.gz.

 -- $maintainer  $(date -R -u -d "@$when")
EOF

arch=$(dpkg --print-architecture)
deb=avtool_${version}_${arch}.deb
say "building $deb (log: ${work#"$here"/}/build.log)"
if ! (cd "$src" && AVTOOL_WHEELS=$wheels dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1); then
  tail -n 40 "$work/build.log" >&2
  die "dpkg-buildpackage failed (whole log: $work/build.log)"
fi
mkdir -p "$out"
mv -f "$work/$deb" "$out/$deb"
if [[ -n $lint ]]; then
  say "lintian $deb"
  lintian --fail-on error,warning --info "$out/$deb" >&2 || die "lintian found problems in $out/$deb"
fi
echo "$out/$deb"
