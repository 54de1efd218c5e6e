"""The procedural virtual world: random scenes ray-cast (vectorized numpy) into RGB + exact metric z-depth.

Each image is one random scene: a room (floor, four walls, ceiling), a walled yard (sky above
the walls) or open ground under a sky with distant buildings, holding boxes, spheres and
cylinders at random poses and sizes. Surfaces carry procedural textures with a fixed scale in
metres (checker, stripes, tiles, value noise, gradients), so texture density, perspective on
the ground, occlusion and object size all encode distance. Shading is Lambertian (ambient + one
directional light) with cast shadows; scenes with a sky add atmospheric haze. Depth is the z
coordinate along the optical axis, clipped to [MIN_DEPTH, MAX_DEPTH]; the sky and ground beyond
MAX_DEPTH read MAX_DEPTH, so every pixel is valid. `draw_labelled` also returns a region mask (structure,
object, sky) for region metrics.

Camera (pinhole, square pixels): fx = fy = (W / 2) / tan(hfov / 2), cx = (W - 1) / 2,
cy = (H - 1) / 2 with pixel centres at integer coordinates (OpenCV convention); randomized
height, pitch, roll and field of view. `mde.data.synth` writes datasets of these scenes.
"""

from __future__ import annotations

import numpy as np

from mde.runtime.metrics import MASK_INVALID, MASK_OBJECT, MASK_STRUCTURE

MAX_DEPTH = 20.0
MIN_DEPTH = 0.5
KINDS = ("room", "yard", "open")
SHAPES = ("box", "sphere", "cylinder")
PATTERNS = ("checker", "stripes", "noise", "gradient", "tiles")
EPS = 1e-4
F = np.float32


# --- procedural textures ----------------------------------------------------------------------


_NOISE_TABLES: dict[int, np.ndarray] = {}


def _noise_table(seed: int) -> np.ndarray:
    """A flat 257 x 257 periodic lattice of uniform values (one of 16 fixed tables)."""
    key = seed % 16
    if key not in _NOISE_TABLES:
        grid = np.random.default_rng(1000 + key).random((256, 256), dtype=F)
        _NOISE_TABLES[key] = np.pad(grid, ((0, 1), (0, 1)), mode="wrap").ravel()
    return _NOISE_TABLES[key]


def _value_noise(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1] (smoothstep-interpolated lattice, period 256)."""
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    fu = fu * fu * (3 - 2 * fu)
    fv = fv * fv * (3 - 2 * fv)
    idx = (iu.astype(np.int32) & 255) * 257 + (iv.astype(np.int32) & 255)
    tab = _noise_table(seed)
    h00, h01 = tab.take(idx), tab.take(idx + 1)
    h10, h11 = tab.take(idx + 257), tab.take(idx + 258)
    return (h00 + (h01 - h00) * fv) * (1 - fu) + (h10 + (h11 - h10) * fv) * fu


def _random_material(rng: np.random.Generator, kind: str | None = None) -> dict:
    """A random texture: pattern, two colours, scale in metres, angle, noise seed."""
    kind = kind or PATTERNS[int(rng.integers(len(PATTERNS)))]
    hue = rng.uniform(0, 1)
    base = _hsv(hue, rng.uniform(0.1, 0.8), rng.uniform(0.45, 0.95))
    other = _hsv((hue + rng.uniform(-0.2, 0.2) + (0.5 if rng.random() < 0.3 else 0.0)) % 1.0,
                 rng.uniform(0.05, 0.8), rng.uniform(0.1, 0.7))
    return {"kind": kind, "c1": base, "c2": other, "scale": float(rng.uniform(0.15, 1.0)),
            "angle": float(rng.uniform(0, np.pi)), "seed": int(rng.integers(1 << 30)),
            "grain": float(rng.uniform(0.05, 0.3))}


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=F)


def _paint(planes: list, mask: np.ndarray, mat: dict, u: np.ndarray, v: np.ndarray) -> None:
    """Write `mat`'s colour at surface coordinates (u, v) into the masked pixels of 3 planes."""
    w = _pattern(mat, u, v)
    c1, c2 = mat["c1"], mat["c2"]
    for i in range(3):
        planes[i][mask] = c1[i] + (c2[i] - c1[i]) * w


def _pattern(mat: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mixing weight in [0, 1] of `mat`'s two colours at surface coordinates (u, v) in metres."""
    s, k = F(mat["scale"]), mat["kind"]
    ca, sa = F(np.cos(mat["angle"])), F(np.sin(mat["angle"]))
    if k == "checker":
        w = ((np.floor(u / s).astype(np.int32) + np.floor(v / s).astype(np.int32)) & 1).astype(F)
    elif k == "stripes":
        x = (u * ca + v * sa) / s
        w = (x - np.floor(x) < 0.5).astype(F)
    elif k == "tiles":
        fu, fv = u / s, v / s
        w = (np.minimum(fu - np.floor(fu), fv - np.floor(fv)) < 0.08).astype(F)
    elif k == "gradient":
        w = np.sin((u * ca + v * sa) / (s * 6)) * F(0.5) + F(0.5)
    else:  # noise
        w = _value_noise(u / s, v / s, mat["seed"]) * F(0.7)
        w += _value_noise(u / s * 4, v / s * 4, mat["seed"] + 1) * F(0.3)
    grain = _value_noise(u * F(9.0), v * F(9.0), mat["seed"] + 7)
    return w * F(1 - mat["grain"]) + grain * F(mat["grain"])


# --- ray-object intersection (components broadcast: scalar origin, array directions, or both arrays)


def _to_local(obj: dict, ox, oy, oz, dx, dy, dz):
    r, c = obj["rot"], obj["center"]
    px, py, pz = ox - c[0], oy - c[1], oz - c[2]
    lo = [px * r[0, i] + py * r[1, i] + pz * r[2, i] for i in range(3)]
    ld = [dx * r[0, i] + dy * r[1, i] + dz * r[2, i] for i in range(3)]
    return lo, ld


def _intersect(obj: dict, o: tuple, d: tuple, want_normal: bool = True):
    """Ray parameter t (inf where missed) and the local hit normal (3 arrays) for one object."""
    (ox, oy, oz), (dx, dy, dz) = _to_local(obj, *o, *d)
    inf = F(np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        if obj["shape"] == "sphere":
            r = F(obj["size"][0])
            b = ox * dx + oy * dy + oz * dz
            a = dx * dx + dy * dy + dz * dz
            disc = b * b - a * (ox * ox + oy * oy + oz * oz - r * r)
            t = (-b - np.sqrt(np.maximum(disc, 0))) / a
            t = np.where((disc >= 0) & (t > EPS), t, inf)
            if not want_normal:
                return t, None
            return t, ((ox + t * dx) / r, (oy + t * dy) / r, (oz + t * dz) / r)
        if obj["shape"] == "box":
            hx, hy, hz = (F(x) for x in obj["size"])
            t1x, t2x = (-hx - ox) / dx, (hx - ox) / dx
            t1y, t2y = (-hy - oy) / dy, (hy - oy) / dy
            t1z, t2z = (-hz - oz) / dz, (hz - oz) / dz
            nx, ny, nz = np.minimum(t1x, t2x), np.minimum(t1y, t2y), np.minimum(t1z, t2z)
            tmin = np.maximum(np.maximum(nx, ny), nz)
            tmax = np.minimum(np.minimum(np.maximum(t1x, t2x), np.maximum(t1y, t2y)),
                              np.maximum(t1z, t2z))
            t = np.where((tmax >= tmin) & (tmin > EPS), tmin, inf)
            if not want_normal:
                return t, None
            zero = np.zeros_like(t)
            return t, (np.where(tmin == nx, -np.sign(dx), zero),
                       np.where((tmin == ny) & (tmin != nx), -np.sign(dy), zero),
                       np.where((tmin == nz) & (tmin != nx) & (tmin != ny), -np.sign(dz), zero))
        r, hh = F(obj["size"][0]), F(obj["size"][1])  # cylinder along local y
        a = dx * dx + dz * dz
        b = ox * dx + oz * dz
        disc = b * b - a * (ox * ox + oz * oz - r * r)
        ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
        ys = oy + ts * dy
        ts = np.where((disc >= 0) & (ts > EPS) & (np.abs(ys) <= hh), ts, inf)
        cap = np.where(oy > 0, hh, -hh)
        tc = (cap - oy) / dy
        xc, zc = ox + tc * dx, oz + tc * dz
        tc = np.where((tc > EPS) & (xc * xc + zc * zc <= r * r) & (np.abs(oy) > hh), tc, inf)
        t = np.minimum(ts, tc)
        if not want_normal:
            return t, None
        side = ts <= tc
        return t, (np.where(side, (ox + t * dx) / r, 0), np.where(side, 0, np.sign(cap)),
                   np.where(side, (oz + t * dz) / r, 0))


# --- scene sampling -----------------------------------------------------------------------------


def _rot(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                              np.cos(roll), np.sin(roll))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return (ry @ rx @ rz).astype(F)


def _sky(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Horizon and zenith colours."""
    return (_hsv(rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.5), rng.uniform(0.85, 1.0)),
            _hsv(rng.uniform(0.55, 0.68), rng.uniform(0.4, 0.9), rng.uniform(0.5, 0.9)))


def _sample_scene(rng: np.random.Generator) -> dict:
    """Camera, room / walled yard / open ground, light, materials and objects of one random scene."""
    kind = str(rng.choice(KINDS, p=[0.4, 0.25, 0.35]))
    hfov = float(np.radians(rng.uniform(50, 90)))
    pitch = float(np.radians(rng.uniform(-5, 30)))
    roll = float(np.radians(rng.uniform(-4, 4)))
    scene: dict = {"kind": kind, "hfov": hfov, "pitch": pitch, "roll": roll, "objects": []}
    mats = {"floor": _random_material(rng)}
    if kind == "open":
        height, cam_xz, yaw = rng.uniform(0.6, 3.0), np.zeros(2), float(rng.uniform(-np.pi, np.pi))
    else:
        lo, hi = (4, 13) if kind == "room" else (8, 15)
        w, dep = rng.uniform(lo, hi), rng.uniform(lo, hi)
        wall_h = rng.uniform(2.5, 4.5) if kind == "room" else rng.uniform(1.5, 6.0)
        scene["bounds"] = np.array([[-w / 2, 0, -dep / 2], [w / 2, wall_h, dep / 2]], dtype=F)
        height = rng.uniform(0.5, min(2.0, wall_h - 0.3) if kind == "room" else 2.5)
        # Stand somewhere inside, look roughly towards the middle.
        cam_xz = np.array([rng.uniform(-w / 2 + 0.5, w / 2 - 0.5), rng.uniform(-dep / 2 + 0.5, dep / 2 - 0.5)])
        yaw = float(np.arctan2(-cam_xz[0], -cam_xz[1]) + rng.uniform(-0.9, 0.9))
        mats["wall"] = _random_material(rng)
        mats["ceiling"] = _random_material(rng, "noise")
    if kind != "room":
        scene["sky"], scene["haze"] = _sky(rng), float(rng.uniform(25, 80))
    scene["materials"] = mats
    scene["ambient"] = float(rng.uniform(0.35, 0.55) if kind == "room" else rng.uniform(0.25, 0.45))
    scene["origin"] = np.array([cam_xz[0], height, cam_xz[1]], dtype=F)
    scene["rot"] = _rot(yaw, pitch, roll)
    elev, azim = np.radians(rng.uniform(25, 70)), rng.uniform(-np.pi, np.pi)
    scene["light"] = np.array([np.cos(elev) * np.sin(azim), np.sin(elev), np.cos(elev) * np.cos(azim)], F)
    scene["diffuse"] = float(rng.uniform(0.5, 0.8))
    _place_objects(rng, scene, yaw, cam_xz)
    if kind == "open":
        _place_buildings(rng, scene, yaw, cam_xz)
    return scene


def _place_buildings(rng: np.random.Generator, scene: dict, yaw: float, cam_xz: np.ndarray) -> None:
    """A few large boxes 11-19 m away: a far backdrop for open scenes (marked `backdrop`)."""
    fwd = np.array([np.sin(yaw), np.cos(yaw)])
    right = np.array([fwd[1], -fwd[0]])
    for _ in range(int(rng.integers(0, 5))):
        dist = rng.uniform(11, 19)
        xz = cam_xz + fwd * dist + right * rng.uniform(-1.3, 1.3) * dist * np.tan(scene["hfov"] / 2)
        size = np.array([rng.uniform(1.5, 4), rng.uniform(1.5, 5), rng.uniform(1.5, 4)], dtype=F)
        scene["objects"].append({"shape": "box", "size": size, "backdrop": True,
                                 "center": np.array([xz[0], size[1], xz[1]], dtype=F),
                                 "radius": float(np.linalg.norm(size)),
                                 "rot": _rot(rng.uniform(-np.pi, np.pi)),
                                 "material": _random_material(rng)})


def _place_objects(rng: np.random.Generator, scene: dict, yaw: float, cam_xz: np.ndarray) -> None:
    fwd = np.array([np.sin(yaw), np.cos(yaw)])
    right = np.array([fwd[1], -fwd[0]])
    count = int(rng.integers(3, 10))
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(count * 4):
        if len(placed) >= count:
            break
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        dist = float(np.exp(rng.uniform(np.log(1.0), np.log(18.0))))
        lateral = rng.uniform(-1.2, 1.2) * dist * np.tan(scene["hfov"] / 2)
        xz = cam_xz + fwd * dist + right * lateral
        scale = rng.uniform(0.2, 1.0) * (1 + 0.05 * dist)
        if shape == "box":
            size = np.array([rng.uniform(0.4, 1.0), rng.uniform(0.3, 1.0),
                             rng.uniform(0.4, 1.0)]) * scale
            radius, half_h = float(np.hypot(size[0], size[2])), float(size[1])
        elif shape == "sphere":
            size = np.array([scale * 0.6, 0, 0])
            radius, half_h = float(size[0]), float(size[0])
        else:
            size = np.array([scale * rng.uniform(0.3, 0.6), scale * rng.uniform(0.4, 1.2), 0])
            radius, half_h = float(size[0]), float(size[1])
        if "bounds" in scene:
            lo, hi = scene["bounds"][0], scene["bounds"][1]
            if not (lo[0] + radius < xz[0] < hi[0] - radius and lo[2] + radius < xz[1] < hi[2] - radius):
                continue
            if scene["kind"] == "room":  # fit under the ceiling
                half_h = min(half_h, float(hi[1]) / 2 - 0.05)
                if shape == "sphere":
                    size[0] = radius = half_h
                else:
                    size[1] = half_h
        if np.hypot(*(xz - cam_xz)) < radius + 0.6:
            continue
        if any(np.hypot(*(xz - p)) < 0.8 * (radius + r) for p, r in placed):
            continue
        floating = shape != "box" and rng.random() < 0.15
        lift = rng.uniform(0.3, 1.5) if floating else 0.0
        tilt = rng.uniform(-0.5, 0.5) if (floating or shape == "sphere") else 0.0
        centre = np.array([xz[0], half_h + lift, xz[1]], dtype=F)
        scene["objects"].append({"shape": shape, "size": size.astype(F), "center": centre,
                                 "radius": float(np.sqrt(radius**2 + half_h**2)),
                                 "rot": _rot(rng.uniform(-np.pi, np.pi), tilt, 0.0),
                                 "material": _random_material(rng)})
        placed.append((xz, radius))


# --- rendering ----------------------------------------------------------------------------------


def _screen_rect(scene: dict, centre: np.ndarray, radius: float, size: int, f: float):
    """Conservative pixel rectangle (r0, r1, c0, c1) covering a world sphere, or None if behind."""
    rel = (centre - scene["origin"]) @ scene["rot"]  # camera coordinates (x right, y up, z fwd)
    zmin, zmax = rel[2] - radius, rel[2] + radius
    if zmax <= EPS:
        return None
    if zmin <= 0.05:
        return 0, size, 0, size
    c = (size - 1) / 2
    us = [f * (rel[0] + sx * radius) / z for sx in (-1, 1) for z in (zmin, zmax)]
    vs = [-f * (rel[1] + sy * radius) / z for sy in (-1, 1) for z in (zmin, zmax)]
    c0, c1 = int(np.floor(min(us) + c)), int(np.ceil(max(us) + c)) + 1
    r0, r1 = int(np.floor(min(vs) + c)), int(np.ceil(max(vs) + c)) + 1
    c0, c1, r0, r1 = max(c0, 0), min(c1, size), max(r0, 0), min(r1, size)
    return None if c0 >= c1 or r0 >= r1 else (r0, r1, c0, c1)


def _background(scene: dict, d: tuple):
    """Depth t, surface id (0 floor, 1 wall, 2 ceiling, 3 sky) and normals of the scene's shell."""
    o = scene["origin"]
    with np.errstate(divide="ignore", invalid="ignore"):
        if "bounds" in scene:
            lo, hi = scene["bounds"]
            ts = [np.where(di > 0, (hi[i] - o[i]) / di, (lo[i] - o[i]) / di) for i, di in enumerate(d)]
            t = np.minimum(np.minimum(ts[0], ts[1]), ts[2])
            axis = np.where(t == ts[1], 1, np.where(t == ts[0], 0, 2))
            sid = np.where(axis == 1, np.where(d[1] < 0, 0, 2), 1).astype(np.int16)
            if "sky" in scene:  # a walled yard: no ceiling, sky above the walls
                open_up = (sid == 2) | ((sid == 1) & (o[1] + t * d[1] > hi[1]))
                t = np.where(open_up, np.inf, t)
                sid = np.where(open_up, 3, sid).astype(np.int16)
        else:
            t = np.where(d[1] < 0, -o[1] / d[1], np.inf).astype(F)
            axis = np.ones(t.shape, dtype=np.int64)
            sid = np.where(d[1] < 0, 0, 3).astype(np.int16)
    normals = [np.where(axis == i, -np.sign(d[i]), 0).astype(F) for i in range(3)]
    return t.astype(F), sid, normals


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one random scene.

    Args:
        rng: the scene's random generator (all randomness comes from it).
        size: image height and width in pixels.

    Returns:
        (rgb H x W x 3 uint8, depth H x W float32 metres along the optical axis, intrinsics dict
        with fx, fy, cx, cy and the camera's height_m, pitch_deg (positive: looking down), roll_deg,
        hfov_deg, scene kind).
    """
    return draw_scene(_sample_scene(rng), size)


def render_labelled(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """`render_scene` plus the region mask: (rgb, depth, mask H x W uint8, intrinsics); see `draw_labelled`."""
    return draw_labelled(_sample_scene(rng), size)


def draw_scene(scene: dict, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Ray-cast a scene dict (as `_sample_scene` makes it); see `render_scene` for the outputs."""
    rgb, depth, _, intr = draw_labelled(scene, size)
    return rgb, depth, intr


def draw_labelled(scene: dict, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """`draw_scene` plus the region mask (rgb, depth, mask, intrinsics).

    The mask is MASK_STRUCTURE (0) where the pixel's ray hits the floor, a wall or the ceiling,
    MASK_OBJECT (1) where it hits a placed object (box, sphere, cylinder, backdrop building) and
    MASK_INVALID (255) on the sky.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return _draw(scene, size)


def _draw(scene: dict, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    f = (size / 2) / np.tan(scene["hfov"] / 2)
    c = (size - 1) / 2
    grid = ((np.arange(size, dtype=F) - F(c)) / F(f))
    xc, yc = np.meshgrid(grid, -grid)  # camera-space ray (x, y, 1): t along it is z-depth
    rot = scene["rot"]
    d = tuple((rot[i, 0] * xc + rot[i, 1] * yc + rot[i, 2]).astype(F) for i in range(3))
    o = scene["origin"]
    t, sid, normal = _background(scene, d)
    oid = np.full((size, size), -1, dtype=np.int16)
    rects = []
    for k, obj in enumerate(scene["objects"]):
        rect = _screen_rect(scene, obj["center"], obj["radius"], size, f)
        rects.append(rect)
        if rect is None:
            continue
        sl = np.s_[rect[0]:rect[1], rect[2]:rect[3]]
        tk, nk = _intersect(obj, tuple(o), tuple(x[sl] for x in d))
        hit = tk < t[sl]
        if not hit.any():
            continue
        t[sl] = np.where(hit, tk, t[sl])
        oid[sl][hit] = k
        rm = obj["rot"]
        for i in range(3):
            normal[i][sl] = np.where(hit, rm[i, 0] * nk[0] + rm[i, 1] * nk[1] + rm[i, 2] * nk[2],
                                     normal[i][sl])
    sky = ~np.isfinite(t)
    tt = np.where(sky, F(MAX_DEPTH * 4), t)
    p = [o[i] + tt * d[i] for i in range(3)]
    albedo = _albedo(scene, p, normal, sid, oid, rects, size)
    light = scene["light"]
    lam = np.maximum(normal[0] * light[0] + normal[1] * light[1] + normal[2] * light[2], 0)
    lam *= _shadow(scene, p, normal, lam > 0, size, f)
    shade = F(scene["ambient"]) + F(scene["diffuse"]) * lam
    rgb = [a * shade for a in albedo]
    if "sky" in scene:
        _sky_and_haze(scene, rgb, d, sky, tt)
    rgb8 = np.empty((size, size, 3), dtype=np.uint8)
    for i in range(3):
        rgb8[..., i] = np.clip(rgb[i] * F(255) + F(0.5), 0, 255)
    depth = np.clip(np.where(sky, F(MAX_DEPTH), t), MIN_DEPTH, MAX_DEPTH).astype(F)
    mask = np.where(sky, MASK_INVALID, np.where(oid >= 0, MASK_OBJECT, MASK_STRUCTURE)).astype(np.uint8)
    intr = {"fx": float(f), "fy": float(f), "cx": float(c), "cy": float(c),
            "height_m": round(float(o[1]), 4), "pitch_deg": round(float(np.degrees(scene["pitch"])), 3),
            "roll_deg": round(float(np.degrees(scene.get("roll", 0.0))), 3),
            "hfov_deg": round(float(np.degrees(scene["hfov"])), 3),
            "scene": scene["kind"]}
    return rgb8, depth, mask, intr


def _albedo(scene: dict, p: list, normal: list, sid: np.ndarray, oid: np.ndarray, rects: list,
            size: int) -> list[np.ndarray]:
    """Per-pixel surface colour: the structure's materials, then each object's in its own frame."""
    albedo = [np.zeros((size, size), dtype=F) for _ in range(3)]
    for s, key in ((0, "floor"), (1, "wall"), (2, "ceiling")):
        m = (sid == s) & (oid < 0)
        if m.any():
            u = np.where(np.abs(normal[0][m]) > 0.5, p[2][m], p[0][m])
            v = np.where(np.abs(normal[1][m]) > 0.5, p[2][m], p[1][m])
            _paint(albedo, m, scene["materials"][key], u, v)
    for k, obj in enumerate(scene["objects"]):
        if rects[k] is None:
            continue
        sl = np.s_[rects[k][0]:rects[k][1], rects[k][2]:rects[k][3]]
        m = oid[sl] == k
        if not m.any():
            continue
        rm, ce = obj["rot"], obj["center"]
        wp = [p[i][sl][m] - ce[i] for i in range(3)]
        wn = [normal[i][sl][m] for i in range(3)]
        lp = [wp[0] * rm[0, j] + wp[1] * rm[1, j] + wp[2] * rm[2, j] for j in range(3)]
        ln = [np.abs(wn[0] * rm[0, j] + wn[1] * rm[1, j] + wn[2] * rm[2, j]) for j in range(2)]
        u = np.where(ln[0] > 0.5, lp[2], lp[0])
        v = np.where(ln[1] > 0.5, lp[2], lp[1])
        _paint([x[sl] for x in albedo], m, obj["material"], u, v)
    return albedo


def _sky_and_haze(scene: dict, rgb: list, d: tuple, sky: np.ndarray, tt: np.ndarray) -> None:
    """Blend distant points into the horizon colour (haze) and paint the sky gradient, in place."""
    fog = 1 - np.exp(tt * F(-1.0 / scene["haze"]))
    dy = d[1][sky]
    v = np.clip(dy / np.sqrt(d[0][sky] ** 2 + dy * dy + d[2][sky] ** 2), 0, 1)
    lo, hi = scene["sky"]
    for i in range(3):
        rgb[i] += (lo[i] - rgb[i]) * fog
        rgb[i][sky] = lo[i] + (hi[i] - lo[i]) * v


def _shadow(scene: dict, p: list, normal: list, lit: np.ndarray, size: int, f: float) -> np.ndarray:
    """1 where a lit point sees the light, 0 where an object blocks it (hard shadows)."""
    vis = np.ones((size, size), dtype=F)
    light = scene["light"]
    for obj in scene["objects"]:
        # Conservative: the bounding sphere swept along -light down to the floor.
        foot = obj["center"] - light * ((obj["center"][1] + obj["radius"]) / light[1])
        box_c = (obj["center"] + foot) / 2
        box_r = float(np.linalg.norm(obj["center"] - foot) / 2 + obj["radius"])
        rect = _screen_rect(scene, box_c, box_r, size, f)
        if rect is None:
            continue
        sl = np.s_[rect[0]:rect[1], rect[2]:rect[3]]
        # Cheap pre-test: does the ray towards the light pass the bounding sphere?
        rel = [F(obj["center"][i]) - p[i][sl] for i in range(3)]
        along = rel[0] * light[0] + rel[1] * light[1] + rel[2] * light[2]
        r2 = F(obj["radius"] ** 2)
        cand = lit[sl] & (along > -obj["radius"]) & (rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2 - along**2 < r2)
        if not cand.any():
            continue
        orig = tuple(p[i][sl][cand] + F(1e-3) * normal[i][sl][cand] for i in range(3))
        tk, _ = _intersect(obj, orig, tuple(light), want_normal=False)
        vis[sl][cand] = np.where(np.isfinite(tk), F(0), vis[sl][cand])
    return vis
