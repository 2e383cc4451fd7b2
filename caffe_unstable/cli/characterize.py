"""cu-characterize: device error profiles of an unstable PipeCNN accelerator (faults.md §8): validate and show
profiles, write characterization vectors, measure them on an accelerator, fit a profile to the counts.

    cu-characterize check pipecnn_kcu1500 board.devprofile.yaml
    cu-characterize show pipecnn_kcu1500 --freq 240:280:10
    cu-characterize vectors --profile pipecnn_kcu1500 --out vectors/
    cu-characterize measure --vectors vectors/ --accel numba --mhz 260 --profile pipecnn_kcu1500 --out meas.csv
    cu-characterize fit meas.csv --base pipecnn_kcu1500 --out board.devprofile.yaml --plot fit.png

Each subcommand is one function registered on the group `main`; `calibrate` and `canaries`, which run a network,
live in characterize_net.py and register themselves on it when it is imported (at the end of this module).
"""
import math
import os

import click

from ..errors import CaffeUnstableError
from . import format_error, run

CONTEXT = {"help_option_names": ["-h", "--help"]}
EPS = 1e-9


@click.group(context_settings=CONTEXT)
def main():
    """Characterize an unstable PipeCNN accelerator: check and show device profiles, write characterization
    vectors, measure them, and fit a device profile to the measurements (faults.md §8)."""


def _tool():
    from .. import __version__
    return f"cu-characterize {__version__}"


def _shown(name, profile):
    """The profile as the user named it: their path, or the shipped file's name."""
    return name if os.path.isfile(name) else profile.path.name


def _warn(lines):
    for line in lines:
        if line:
            click.echo(line, err=True)


# -- check ----------------------------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.argument("profiles", nargs=-1, required=True, metavar="PROFILE...")
def check(profiles):
    """Validate device profiles.

    Each PROFILE is a *.devprofile.yaml path or a shipped profile's name. Prints one `ok:` line per valid file and
    the one-line error of each invalid one (exit code 1 if any is invalid)."""
    from ..accel.faults.profile import DeviceProfile

    failed = False
    for name in profiles:
        try:
            profile = DeviceProfile.load(name)
        except (CaffeUnstableError, OSError) as exc:
            if os.environ.get("CU_DEBUG") == "1":
                raise
            failed = True
            click.echo(format_error(exc) if isinstance(exc, CaffeUnstableError)
                       else f"error: {exc.filename or name}: {exc.strerror or exc}", err=True)
            continue
        click.echo(f"ok: {_shown(name, profile)} (status {profile.status}; {timing_summary(profile)})")
    if failed:
        raise SystemExit(1)


def timing_summary(profile):
    """`timing …; first failure … MHz` of a validated profile."""
    t = profile.timing
    if t["model"] == "none":
        return "timing none; first failure none"
    safe = f"safe {t['safe_mhz']:g} MHz"
    if t["model"] == "carry_horizon":
        if t["fixed_k"] is not None:
            first = "none" if t["fixed_k"] >= 31 else "at every clock"
            return f"timing carry_horizon fixed_k {t['fixed_k']}, {safe}; first failure {first}"
        return f"timing carry_horizon, {safe}; first failure {profile.first_failure_mhz():.1f} MHz"
    rate = t["rate"]
    if rate["curve"] == "exponential":
        first = f"{max(rate['poff_mhz'], t['safe_mhz']):.1f} MHz"
    elif rate["curve"] == "table":
        j = next((i for i, (_, p) in enumerate(rate["table"]) if p > 0), None)
        first = "none" if j is None else f"{max(rate['table'][max(j - 1, 0)][0], t['safe_mhz']):.1f} MHz"
    else:
        first = f"{t['safe_mhz']:.1f} MHz"
    return f"timing rate ({rate['curve']}), {safe}; first failure {first}"


# -- show -----------------------------------------------------------------------------------------------------------
def parse_freqs(spec, profile):
    """`LO:HI:STEP` (HI included), `F`, or None: the profile's valid_mhz in 10 MHz steps."""
    if spec is None:
        lo, hi = profile.timing["valid_mhz"] or (100.0, 300.0)
        step = 10.0
    else:
        parts = spec.split(":")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise CaffeUnstableError("--freq", f"expected MHz or LO:HI:STEP, got {spec!r}") from None
        if len(values) == 1:
            values = [values[0], values[0], 1.0]
        if len(values) != 3 or values[2] <= 0 or values[1] < values[0] or values[0] <= 0:
            raise CaffeUnstableError("--freq", f"a clock range is LO:HI:STEP with 0 < LO <= HI and STEP > 0, got "
                                               f"{spec!r}")
        lo, hi, step = values
    return [lo + k * step for k in range(int(math.floor((hi - lo) / step + EPS)) + 1)]


def _fmt_p(p):
    return "1" if p > 1 - 5e-6 else f"{p:.4g}"


def horizon_cells(t, f, lanes):
    """(K per lane, compact when the lanes agree; P(K) over the lanes) of a carry-horizon timing at clock f."""
    import numpy as np

    from ..accel.faults.carry_horizon import horizon_k, k_distribution
    if t["fixed_k"] is not None:
        return str(t["fixed_k"]), f"{min(t['fixed_k'], 31)}:1"
    if f <= t["safe_mhz"]:
        return "31", "31:1 (safe)"
    offsets = t["lane_offsets_ns"] or [0.0] * lanes
    ks = [horizon_k(f, t["t0_ns"], t["tau_ns_per_bit"], d) for d in offsets]
    k_text = str(ks[0]) if len(set(ks)) == 1 else ",".join(map(str, ks))
    if not t["jitter_ns"]:
        pk = np.bincount(ks, minlength=32) / len(ks)
    else:
        pk = np.mean([k_distribution(f, t["t0_ns"], t["tau_ns_per_bit"], t["jitter_ns"], d) for d in offsets],
                     axis=0)
    return k_text, " ".join(f"{k}:{_fmt_p(p)}" for k, p in enumerate(pk) if p >= 5e-6)


def show_lines(profile, freqs):
    """The `show` table: one header line, then f, T, K per lane, P(K) and the rate model's p per add."""
    from ..accel.faults.rate import RateTiming
    t = profile.timing
    lanes = profile.accelerator["lane_num"]
    head = f"{profile.name} ({profile.status}): timing {t['model']}"
    if t["model"] == "none":
        return [head + ": no timing faults at any clock"]
    if t["model"] == "carry_horizon" and t["fixed_k"] is None:
        head += (f", t0 {t['t0_ns']:g} ns, tau {t['tau_ns_per_bit']:g} ns/bit, jitter {t['jitter_ns']:g} ns "
                 f"{t['jitter_scope']}")
        if t["lane_offsets_ns"]:
            head += f", lane offsets {min(t['lane_offsets_ns']):+g} … {max(t['lane_offsets_ns']):+g} ns"
    head += f", safe {t['safe_mhz']:g} MHz; {timing_summary(profile).split('; ')[-1]}"
    rate = RateTiming.from_profile(t, None) if t["rate"] is not None else None
    ch = t["model"] == "carry_horizon"
    rows = [("f_MHz", "T_ns", "K", "P(K)" + (" (mean over lanes)" if ch and t["lane_offsets_ns"] else ""),
             "p_add(rate)" if rate is not None else "")]
    for f in freqs:
        k, pk = horizon_cells(t, f, lanes) if ch else ("-", "-")
        rows.append((f"{f:g}", f"{1000.0 / f:.3f}", k, pk, f"{rate.p(f):.3g}" if rate is not None else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    table = ["  ".join(c.rjust(w) if i < 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    return [head] + table


@main.command(context_settings=CONTEXT)
@click.argument("profile")
@click.option("--freq", default=None, help="Clocks to tabulate, LO:HI:STEP in MHz (HI included) or one clock "
                                           "[default: the profile's valid_mhz in 10 MHz steps].")
@click.option("--materialize", type=click.Path(dir_okay=False), default=None,
              help="Write the materialised permanent stuck-at map (listed entries and random maps) to this CSV.")
def show(profile, freq, materialize):
    """Tabulate a profile's timing against the clock.

    Per clock: the period, the horizon K per lane (one value when the lanes agree), its distribution P(K) under
    jitter, and the rate model's error probability per accumulate add where the profile has a `timing.rate`."""
    run(_show, profile, freq, materialize)


def _show(name, freq, materialize):
    from ..accel.faults.profile import DeviceProfile
    profile = DeviceProfile.load(name)
    _warn(profile.warnings())
    for line in show_lines(profile, parse_freqs(freq, profile)):
        click.echo(line)
    if materialize:
        entries, skipped = stuck_map(profile)
        _warn(f"warning: permanent.random[{e}] ({site}): a memory map is materialised per layer when a net is "
              f"attached; not written" for e, site in skipped)
        write_stuck_csv(materialize, entries)
        counts = ", ".join(f"{s} {sum(1 for m in entries if m['site'] == s)}" for s in
                           ("multiplier", "product", "accumulator", "weight_mem", "act_mem"))
        click.echo(f"Wrote {len(entries)} stuck-at entries to {materialize} ({counts})")


def stuck_map(profile):
    """(listed entries, then the random datapath maps materialised; [(e, site)] of random memory maps skipped)."""
    from ..accel.faults.stuck_at import DATAPATH, materialize
    acc, perm = profile.accelerator, profile.permanent
    entries = list(perm["stuck_at"]) + profile.stuck_file_entries()
    skipped = []
    for e, entry in enumerate(perm["random"]):
        if entry["site"] in DATAPATH:
            entries += materialize(entry, e, acc["lane_num"], acc["vec_size"], profile.widths())
        else:
            skipped.append((e, entry["site"]))
    return entries, skipped


def write_stuck_csv(path, entries):
    import csv
    import io

    from ..accel.faults.profile import STUCK_CSV_HEADER
    from ..io.atomic import write_bytes
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(STUCK_CSV_HEADER)
    for m in entries:
        writer.writerow(["" if m.get(k) is None else m[k] for k in STUCK_CSV_HEADER])
    write_bytes(path, buf.getvalue().encode("utf-8"))


# -- vectors ---------------------------------------------------------------------------------------------------------
def parse_ints(option, spec, lo, hi):
    """`A:B` ranges (inclusive) and single values, comma-separated; each in [lo, hi]."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            a, b = (int(x) for x in part.split(":")) if ":" in part else (int(part), int(part))
        except ValueError:
            raise CaffeUnstableError(option, f"expected integers or A:B ranges separated by ',', got {spec!r}") \
                from None
        if not lo <= a <= b <= hi:
            raise CaffeUnstableError(option, f"values must lie in [{lo}, {hi}], got {part!r}")
        out += [v for v in range(a, b + 1) if v not in out]
    return out


@main.command(context_settings=CONTEXT)
@click.option("--profile", required=True, help="Device profile whose accelerator build (VEC_SIZE, LANE_NUM, "
                                               "PIPE_DEPTH, widths) and timing sites the vectors are made for.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the vectors (*.npz) and their manifest vectors.yaml.")
@click.option("--chain-lens", "--chain_lens", "chain_lens", default="1:31", show_default=True,
              help="Carry chain lengths ℓ, as A:B ranges and values separated by ','.")
@click.option("--seu-steps", "--seu_steps", "seu_steps", default="64,1024", show_default=True,
              help="MAC steps L of the zero-input seu vectors (M = L·VEC MACs per output); empty for none.")
@click.option("--size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Output rows and columns of every vector (H = W): trials per lane per image.")
@click.option("--images", type=click.IntRange(min=1), default=1, show_default=True, help="Images per launch (N).")
def vectors(profile, out, chain_lens, seu_steps, size, images):
    """Write the characterization vectors.

    The layers of faults.md §8.2 with their expected clean outputs: one `carry` vector per chain length (every
    output has exactly one add with a carry chain of that length) and zero-input `seu` vectors, each a 1×1
    convolution with one output channel per lane, and their manifest vectors.yaml."""
    run(_vectors, profile, out, chain_lens, seu_steps, size, images)


def _vectors(name, out, chain_lens, seu_steps, size, images):
    from ..accel.faults import char_vectors
    from ..accel.faults.profile import DeviceProfile
    profile = DeviceProfile.load(name)
    if "accumulate" not in profile.timing["sites"]:
        raise CaffeUnstableError("timing.sites", "the carry vectors exercise the accumulate add, which this "
                                                 "profile does not model")
    lengths = parse_ints("--chain-lens", chain_lens, 1, 31)
    steps = parse_ints("--seu-steps", seu_steps, 1, 1 << 20)
    made = [char_vectors.carry_vector(ell, profile.accelerator, profile.timing, images, size) for ell in lengths]
    made += [char_vectors.seu_vector(L, profile.accelerator, profile.soft_errors, images, size) for L in steps]
    if not made:
        raise CaffeUnstableError("vectors", "no vectors asked for (--chain-lens and --seu-steps are empty)")
    manifest = char_vectors.save(made, out, profile, _tool())
    click.echo(f"Wrote {len(made)} vectors to {out} ({len(lengths)} carry, {len(steps)} seu; "
               f"{images * size * size} trials per lane and vector) and {manifest}")


# -- measure ---------------------------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.option("--vectors", "vectors_dir", required=True, type=click.Path(file_okay=False),
              help="Folder written by `cu-characterize vectors`.")
@click.option("--accel", type=click.Choice(["numba", "opencl"]), default="numba", show_default=True,
              help="The accelerator that runs the vectors.")
@click.option("--mhz", type=float, required=True, help="The achieved kernel clock in MHz, as the runtime reports "
                                                       "it (recorded in every row).")
@click.option("--profile", default=None, help="Simulate this device profile's faults (synthetic measurements).")
@click.option("--freq", type=float, default=None, help="The simulated clock in MHz [default: --mhz].")
@click.option("--ser", type=float, default=None, help="Simulated soft-error rate per MAC (overrides the profile's).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs of every vector (one row per run; on a simulator each run draws fresh faults).")
@click.option("--seed", type=int, default=None, help="Seed of the simulated faults [default: drawn and printed].")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Measurement CSV to write.")
@click.option("--append", is_flag=True, help="Add the rows to an existing --out file.")
def measure(vectors_dir, accel, mhz, profile, freq, ser, repeat, seed, out, append):
    """Run the vectors and count errors.

    Every output is compared bit for bit with the expected one; one count row per vector, lane and run is written
    (faults.md §8.2). On a board set the clock with the platform's tools and pass the achieved --mhz; on a
    simulator --profile/--freq/--ser produce synthetic measurements."""
    run(_measure, vectors_dir, accel, mhz, profile, freq, ser, repeat, seed, out, append)


def _measure(vectors_dir, accel, mhz, profile_name, freq, ser, repeat, seed, out, append):
    import numpy as np

    from ..accel import measure as runner
    from ..accel.faults import char_vectors, models_for
    from ..accel.faults.characterize import write_measurements
    from ..accel.faults.profile import DEFAULT_PROFILE, DeviceProfile
    from ..accel.faults.rng import check_seed

    if mhz <= 0:
        raise CaffeUnstableError("--mhz", f"must be a clock in MHz > 0, got {mhz:g}")
    if freq is not None and ser is not None:
        raise CaffeUnstableError(None, "--freq and --ser are exclusive; put soft errors in the profile to combine "
                                       "them")
    manifest = char_vectors.load_manifest(vectors_dir)
    models, profile, simulated = [], None, ""
    if profile_name is not None or freq is not None or ser is not None:
        profile = DeviceProfile.load(profile_name or DEFAULT_PROFILE)
        runner.check_build(manifest, profile, profile_name or DEFAULT_PROFILE)
        clock = freq if freq is not None or ser is not None else mhz
        _warn(profile.warnings() + [profile.check_freq(clock)])
        if ser is not None and not 0 <= ser <= 0.01:
            raise CaffeUnstableError("--ser", f"must be a rate per MAC in [0, 0.01], got {ser:g}")
        models = models_for(profile, freq_mhz=clock, ser=ser)
        seed = check_seed(seed) if seed is not None else int(np.random.SeedSequence().entropy % (1 << 63))
        point = f"{clock:g} MHz" if clock is not None else f"ser {ser:g}"
        simulated = f" (simulated: {profile.name} at {point}, seed {seed})"
    rows = runner.measure(vectors_dir, runner.BackendRunner(accel, runner.hw_config(manifest)), mhz, models,
                          seed or 0, repeat, manifest)
    write_measurements(out, rows, append)
    counts = "; ".join(f"{cls} {e} errors in {t} trials" for cls, (_, e, t) in runner.summary(rows).items())
    click.echo(f"Measured {len(manifest['vectors'])} vectors at {mhz:g} MHz{simulated}: {counts}; "
               f"{'appended' if append else 'wrote'} {len(rows)} rows to {out}")


# -- fit -------------------------------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.argument("measurements", metavar="MEAS.csv", type=click.Path(dir_okay=False))
@click.option("--base", required=True, help="The profile to start from (its build, safe clock and other keys are "
                                            "kept).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The fitted *.devprofile.yaml.")
@click.option("--fit-lanes", "--fit_lanes", "fit_lanes", is_flag=True,
              help="Also fit per-lane delay offsets (lane_offsets_ns, summing to 0).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of P(error) against f per chain length with the fitted curves.")
def fit(measurements, base, out, fit_lanes, plot):
    """Fit a device profile to measurements.

    Maximum-likelihood fit of the carry-horizon timing (t0, tau, jitter) and the soft-error rate to the count rows
    of MEAS.csv (or a YAML file with `rows`); writes the base profile with the fitted values, status measured, the
    measurements' sha256 and a `fit` block (faults.md §8.3, §8.5)."""
    run(_fit, measurements, base, out, fit_lanes, plot)


def _fit(measurements, base_name, out, fit_lanes, plot):
    from ..accel.faults.characterize import read_measurements
    from ..accel.faults.fit_report import Fit
    from ..accel.faults.profile import DeviceProfile

    rows = read_measurements(measurements)
    base = DeviceProfile.load(base_name)
    try:
        carry = [r for r in rows if r["vector_class"] == "carry"]
        if fit_lanes and carry and all(r["lane"] is None for r in carry):
            raise CaffeUnstableError("measurements", "--fit-lanes needs carry rows that name their lane")
        result = Fit(rows, base, fit_lanes)
        data = result.profile_data(measurements, out)
    except CaffeUnstableError as exc:
        if exc.where in ("measurements", "fit"):      # the refusals of faults.md §8.3, named after the file
            raise CaffeUnstableError(measurements, f"{exc.where}: {exc.what}") from None
        raise
    if plot and result.carry is None:
        raise CaffeUnstableError("--plot", "the plot shows carry rows; these measurements have none")
    DeviceProfile(data).dump(out)
    for line in result.lines():
        click.echo(line)
    if plot:
        result.plot(plot)
    click.echo(f"Wrote {out} (status measured, {len(rows)} rows)" + (f" and {plot}" if plot else ""))


from . import characterize_net  # noqa: E402,F401  (registers calibrate and canaries on main)
