/* test_safetensors.c: round trips of every dtype, the writer's layout
 * (alignment, padding, atomic file), refusal of corrupted headers with
 * messages that name the file and the fault, truncations and bit flips,
 * dtype conversion, and interchange with Python (the safetensors package if
 * installed, else torch plus the format read and written by hand exactly
 * as the reference library lays it out). */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "harness.h"
#include "safetensors.h"

/* ---- the shared test tensors (the Python script computes the same) ---- */

typedef struct spec {
    const char *name;
    st_dtype dtype;
    int rank;
    int64_t shape[8];
} spec;

static const spec specs[] = {
    {"a.f32", ST_F32, 2, {2, 3}},     {"b.f64", ST_F64, 1, {5}},        {"c.i32", ST_I32, 3, {3, 1, 2}},
    {"d.bool", ST_BOOL, 1, {7}},      {"e.f16", ST_F16, 1, {4}},        {"f.bf16", ST_BF16, 2, {2, 2}},
    {"g.i64", ST_I64, 1, {3}},        {"h.u8", ST_U8, 1, {5}},          {"i.scalar", ST_F32, 0, {0}},
    {"j.empty", ST_F32, 2, {0, 3}},   {"k.rank8", ST_F64, 8, {1, 2, 1, 2, 1, 2, 1, 1}},
};
enum { NSPEC = sizeof specs / sizeof specs[0] };

/* value of element i of tensor k, as a double */
static double value(int k, int64_t i, st_dtype dt) {
    if (dt == ST_BOOL)
        return (i + k) % 3 == 0;
    if (dt == ST_I32 || dt == ST_I64)
        return (double)((i * 7 % 13) - 6 + k);
    if (dt == ST_U8)
        return (double)((i * 7 % 13) + k);
    return (double)((i * 7 % 13) - 6) + k * 0.25; /* exact in F16 and BF16 too */
}

static uint16_t to_half(double v) { /* exact for the small values above */
    if (v == 0)
        return 0;
    int sign = v < 0;
    v = fabs(v);
    int e;
    double m = frexp(v, &e); /* v = m 2^e, m in [0.5, 1) */
    int exp = e - 1 + 15;
    uint16_t man = (uint16_t)((m * 2 - 1) * 1024 + 0.5);
    return (uint16_t)(sign << 15 | exp << 10 | man);
}

static uint16_t to_bf16(double v) {
    float f = (float)v;
    uint32_t b;
    memcpy(&b, &f, 4);
    return (uint16_t)(b >> 16); /* exact for the small values above */
}

static void *make_data(int k, const spec *s) {
    st_tensor t = {.rank = s->rank};
    memcpy(t.shape, s->shape, sizeof t.shape);
    int64_t n = st_numel(&t);
    uint8_t *buf = calloc((size_t)n + 1, 8);
    for (int64_t i = 0; i < n; i++) {
        double v = value(k, i, s->dtype);
        switch (s->dtype) {
        case ST_F32: ((float *)buf)[i] = (float)v; break;
        case ST_F64: ((double *)buf)[i] = v; break;
        case ST_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
        case ST_I64: ((int64_t *)buf)[i] = (int64_t)v; break;
        case ST_BOOL: case ST_U8: buf[i] = (uint8_t)v; break;
        case ST_F16: ((uint16_t *)buf)[i] = to_half(v); break;
        case ST_BF16: ((uint16_t *)buf)[i] = to_bf16(v); break;
        default: break;
        }
    }
    return buf;
}

static int write_specs(const char *path, char *err) {
    st_tensor ts[NSPEC];
    void *bufs[NSPEC];
    for (int k = 0; k < NSPEC; k++) {
        bufs[k] = make_data(k, &specs[k]);
        ts[k] = (st_tensor){.name = specs[k].name, .dtype = specs[k].dtype, .rank = specs[k].rank, .data = bufs[k]};
        memcpy(ts[k].shape, specs[k].shape, sizeof ts[k].shape);
    }
    st_kv meta[] = {{"framework", "lethe"}, {"note", "\xc3\xbc \"quoted\""}};
    int rc = st_save(path, ts, NSPEC, meta, 2, err);
    for (int k = 0; k < NSPEC; k++)
        free(bufs[k]);
    return rc;
}

/* 0 if f holds exactly the spec tensors; else prints why. */
static int check_specs(const st_file *f, int check_meta) {
    if (f->ntensors != NSPEC) {
        printf("# %zu tensors, want %d\n", f->ntensors, NSPEC);
        return 1;
    }
    for (int k = 0; k < NSPEC; k++) {
        const st_tensor *t = st_find(f, specs[k].name);
        if (!t || t->dtype != specs[k].dtype || t->rank != specs[k].rank) {
            printf("# %s missing or wrong dtype/rank\n", specs[k].name);
            return 1;
        }
        for (int d = 0; d < t->rank; d++)
            if (t->shape[d] != specs[k].shape[d]) {
                printf("# %s: shape differs\n", specs[k].name);
                return 1;
            }
        int64_t n = st_numel(t);
        double *v = malloc((size_t)n * sizeof *v + 8);
        char err[LETHE_ERR_LEN];
        if (st_read_as(t, ST_F64, v, n, err)) {
            printf("# %s\n", err);
            free(v);
            return 1;
        }
        for (int64_t i = 0; i < n; i++)
            if (v[i] != value(k, i, specs[k].dtype)) {
                printf("# %s[%" PRId64 "] = %g, want %g\n", specs[k].name, i, v[i], value(k, i, specs[k].dtype));
                free(v);
                return 1;
            }
        free(v);
    }
    if (check_meta) {
        const char *fw = st_meta_get(f, "framework"), *note = st_meta_get(f, "note");
        if (!fw || strcmp(fw, "lethe") || !note || strcmp(note, "\xc3\xbc \"quoted\"")) {
            printf("# metadata differs\n");
            return 1;
        }
    }
    return 0;
}

static void test_roundtrip(void) {
    char path[600], err[LETHE_ERR_LEN] = "";
    snprintf(path, sizeof path, "%s/all.safetensors", th_tmpdir());
    int rc = write_specs(path, err);
    st_file *f = NULL;
    int rc2 = rc ? -1 : st_load(path, 0, &f, err);
    int ok = rc == 0 && rc2 == 0 && check_specs(f, 1) == 0;
    /* layout: header padded to 8, data section 64-aligned in memory, every
     * tensor aligned to its element size */
    if (ok) {
        uint8_t *b;
        size_t n;
        fs_read_file(path, 1 << 20, &b, &n, err);
        uint64_t hlen = 0;
        for (int i = 0; i < 8; i++)
            hlen |= (uint64_t)b[i] << (8 * i);
        ok = (8 + hlen) % 8 == 0 && b[8 + hlen - 1] != 0;
        free(b);
        for (size_t i = 0; i < f->ntensors && ok; i++)
            ok = (uintptr_t)f->tensors[i].data % st_dtype_size(f->tensors[i].dtype) == 0;
        ok = ok && (uintptr_t)st_find(f, "b.f64")->data % 64 == 0; /* F64 first: at the data start */
        ok = ok && !strcmp(f->tensors[0].name, "a.f32"); /* header keeps the caller's order */
        ok = ok && st_find(f, "nope") == NULL && st_meta_get(f, "nope") == NULL;
    }
    th_check(ok, "safetensors_roundtrip_all_dtypes", "rc %d %d: %s", rc, rc2, err);
    st_free(f);

    /* the same bytes in memory */
    st_tensor one = {.name = "x", .dtype = ST_F32, .rank = 1, .shape = {2}, .data = (float[]){1.5f, -2}};
    uint8_t *buf;
    size_t len;
    rc = st_serialize(&one, 1, NULL, 0, &buf, &len, err);
    rc2 = rc ? -1 : st_parse(buf, len, "mem", &f, err);
    ok = rc == 0 && rc2 == 0 && f->ntensors == 1 && ((const float *)f->tensors[0].data)[1] == -2 && f->nmeta == 0;
    th_check(ok, "safetensors_serialize_parse", "rc %d %d: %s", rc, rc2, err);
    if (!rc2)
        st_free(f);
    if (!rc)
        free(buf);
}

static void test_writer_refusals(void) {
    char path[600], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/refused.safetensors", th_tmpdir());
    float x[2] = {0};
    st_tensor dup[2] = {{.name = "w", .dtype = ST_F32, .rank = 1, .shape = {2}, .data = x},
                        {.name = "w", .dtype = ST_F32, .rank = 1, .shape = {2}, .data = x}};
    int bad = 0;
    bad += st_save(path, dup, 2, NULL, 0, err) != LETHE_EARG || !strstr(err, "duplicate") || !strstr(err, path);
    st_tensor t = dup[0];
    t.name = "";
    bad += st_save(path, &t, 1, NULL, 0, err) != LETHE_EARG;
    t.name = "__metadata__";
    bad += st_save(path, &t, 1, NULL, 0, err) != LETHE_EARG;
    t.name = "w";
    t.rank = 9;
    bad += st_save(path, &t, 1, NULL, 0, err) != LETHE_EARG;
    t.rank = 1;
    t.shape[0] = -1;
    bad += st_save(path, &t, 1, NULL, 0, err) != LETHE_EARG;
    t.shape[0] = 2;
    t.data = NULL;
    bad += st_save(path, &t, 1, NULL, 0, err) != LETHE_EARG;
    bad += fs_exists(path);
    char nodir[700];
    snprintf(nodir, sizeof nodir, "%s/missing/dir/x.safetensors", th_tmpdir());
    bad += st_save(nodir, dup, 1, NULL, 0, err) != LETHE_EIO;
    th_check(bad == 0, "safetensors_writer_refusals", "%d bad tensors accepted (last: %s)", bad, err);
}

/* a file = 8-byte length + header + data_len bytes of data */
static uint8_t *raw_file(const char *header, size_t hlen, size_t data_len, uint64_t declared, size_t *n) {
    uint8_t *b = calloc(8 + hlen + data_len + 1, 1);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(declared >> (8 * i));
    memcpy(b + 8, header, hlen);
    *n = 8 + hlen + data_len;
    return b;
}

static void test_corrupt_headers(void) {
    static const struct {
        const char *header;
        size_t data;
        const char *why;
    } cases[] = {
        {"{abc", 0, "header JSON"},
        {"[]", 0, "not a JSON object"},
        {"{\"a\":{\"dtype\":\"F8\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "data section has 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "needs 8 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "hole of 4 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "4 bytes after the last"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "duplicate key \"a\""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, "end before"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8, "unknown field"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "missing \"data_offsets\""},
        {"{\"__metadata__\":{\"k\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
         "not a string"},
        {"{\"__metadata__\":[],\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
         "__metadata__ must be"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, "rank 9"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],\"data_offsets\":[0,8]}}", 8,
         "overflows"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[[[[[2]]]]],\"data_offsets\":[0,8]}}", 8, "nesting"},
        {"{\"\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "empty tensor name"},
        {"{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "NUL"},
        {"{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "UTF-8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "data_offsets must be"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0.0,8.0]}}", 8, "data_offsets must be"},
        {"{\"a\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype must be a string"},
        {"{\"a\":5}", 0, "expected an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "shape must be an array"},
        {"{}", 4, "4 bytes after the last"},
    };
    int bad = 0;
    char err[LETHE_ERR_LEN];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n;
        uint8_t *b = raw_file(cases[i].header, strlen(cases[i].header), cases[i].data, strlen(cases[i].header), &n);
        char name[32];
        snprintf(name, sizeof name, "case%zu.st", i);
        st_file *f = NULL;
        int rc = st_parse(b, n, name, &f, err);
        if (rc == 0 || f || !strstr(err, cases[i].why) || strncmp(err, name, strlen(name)) != 0) {
            printf("# case %zu: rc %d, \"%s\" (want \"%s\")\n", i, rc, err, cases[i].why);
            bad++;
            st_free(f);
        }
        free(b);
    }
    th_check(bad == 0, "safetensors_corrupt_headers_refused", "%d of %zu corrupted headers accepted or misreported",
             bad, sizeof cases / sizeof cases[0]);

    /* the length field itself */
    size_t n;
    st_file *f = NULL;
    int b2 = 0;
    uint8_t *b = raw_file("{}", 2, 0, 2, &n);
    b2 += st_parse(b, 5, "short", &f, err) != LETHE_EFORMAT || !strstr(err, "too short");
    free(b);
    b = raw_file("{}", 2, 0, 100, &n);
    b2 += st_parse(b, n, "long", &f, err) != LETHE_EFORMAT || !strstr(err, "exceeds");
    free(b);
    b = raw_file("{}", 2, 0, (uint64_t)1 << 40, &n);
    b2 += st_parse(b, n, "huge", &f, err) != LETHE_ELIMIT || !strstr(err, "limit");
    free(b);
    b = raw_file("{}", 2, 0, 0, &n);
    b2 += st_parse(b, n, "zero", &f, err) != LETHE_EFORMAT;
    free(b);
    b = raw_file("{}", 2, 0, 2, &n);
    int okempty = st_parse(b, n, "empty", &f, err) == 0 && f->ntensors == 0;
    st_free(f);
    free(b);
    th_check(b2 == 0 && okempty, "safetensors_header_length_checks", "%d refused wrongly (%s)", b2, err);
}

/* Every truncation of a valid file is refused; random bit flips never crash. */
static void test_truncation_and_flips(void) {
    char path[600], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/all.safetensors", th_tmpdir());
    uint8_t *b;
    size_t n;
    if (fs_read_file(path, 1 << 20, &b, &n, err)) {
        th_fail("safetensors_truncations_refused", "%s", err);
        return;
    }
    int accepted = 0;
    for (size_t len = 0; len < n; len++) {
        st_file *f;
        if (st_parse(b, len, "cut", &f, err) == 0) {
            accepted++;
            st_free(f);
        }
    }
    /* also through st_load, which names the file */
    char cut[700];
    snprintf(cut, sizeof cut, "%s/cut.safetensors", th_tmpdir());
    fs_write_atomic(cut, b, n - 3, err);
    st_file *f;
    int rc = st_load(cut, 0, &f, err);
    int named = rc != 0 && strstr(err, cut) != NULL;
    int lim = st_load(path, 16, &f, err) == LETHE_ELIMIT;
    th_check(accepted == 0 && named && lim, "safetensors_truncations_refused",
             "%d truncations accepted, named %d, limit %d (%s)", accepted, named, lim, err);

    uint8_t *m = malloc(n);
    uint64_t s = 12345;
    int parsed = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(m, b, n);
        for (int k = 0; k < 1 + it % 4; k++) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            size_t pos = it % 3 ? 8 + s % (n - 8 > 400 ? 400 : n - 8) : s % n; /* mostly the header */
            m[pos] ^= (uint8_t)(1u << (s >> 60 & 7));
        }
        if (st_parse(m, n, "flip", &f, err) == 0) {
            parsed++;
            /* whatever parsed must be internally consistent */
            for (size_t i = 0; i < f->ntensors; i++)
                if ((const uint8_t *)f->tensors[i].data + f->tensors[i].nbytes > m + n)
                    accepted++;
            st_free(f);
        }
    }
    free(m);
    free(b);
    th_check(accepted == 0, "safetensors_bit_flips_safe", "%d out-of-bounds tensors", accepted);
    printf("# %d of 20000 bit-flipped files still parsed (flips in data or in digits)\n", parsed);
}

static void test_conversions(void) {
    uint16_t half[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x3555};
    st_tensor t = {.name = "h", .dtype = ST_F16, .rank = 1, .shape = {6}, .data = half, .nbytes = sizeof half};
    float out[6];
    char err[LETHE_ERR_LEN];
    int rc = st_read_as(&t, ST_F32, out, 6, err);
    int ok = rc == 0 && out[0] == 1 && out[1] == -2 && out[2] == 65504 && out[3] == ldexpf(1, -24) && isinf(out[4]) &&
             fabsf(out[5] - 0.33325195f) < 1e-7f;
    uint16_t bf[] = {0x3FC0, 0xC080};
    st_tensor tb = {.name = "b", .dtype = ST_BF16, .rank = 1, .shape = {2}, .data = bf, .nbytes = 4};
    ok = ok && st_read_as(&tb, ST_F32, out, 2, err) == 0 && out[0] == 1.5f && out[1] == -4;
    int64_t big[] = {1, (int64_t)1 << 40};
    st_tensor ti = {.name = "i", .dtype = ST_I64, .rank = 1, .shape = {2}, .data = big, .nbytes = 16};
    int32_t o32[2];
    ok = ok && st_read_as(&ti, ST_I32, o32, 2, err) == LETHE_ELIMIT && strstr(err, "does not fit");
    ti.shape[0] = 1;
    ok = ok && st_read_as(&ti, ST_I32, o32, 1, err) == 0 && o32[0] == 1;
    ok = ok && st_read_as(&ti, ST_I32, o32, 2, err) == LETHE_EARG; /* count mismatch */
    uint8_t u[] = {0, 1, 2};
    st_tensor tu = {.name = "u", .dtype = ST_U8, .rank = 1, .shape = {3}, .data = u, .nbytes = 3};
    uint8_t ob[3];
    ok = ok && st_read_as(&tu, ST_BOOL, ob, 3, err) == LETHE_EFORMAT;
    ok = ok && st_read_as(&t, ST_I32, o32, 6, err) == LETHE_EARG; /* float -> int is not a load conversion */
    th_check(ok, "safetensors_dtype_conversions", "conversion mismatch (%s)", err);
    ok = st_from_lethe(LETHE_F32) == ST_F32 && st_to_lethe(ST_BOOL) == LETHE_BOOL && st_to_lethe(ST_F16) == -1 &&
         st_dtype_from_name("BF16") == ST_BF16 && st_dtype_from_name("bf16") == -1 && st_dtype_size(ST_I64) == 8;
    th_check(ok, "safetensors_dtype_table", "dtype table mismatch");
}

/* ---- Python interchange ------------------------------------------------ */

static const char *py_script =
    "import sys, json, struct\n"
    "import torch\n"
    "try:\n"
    "    import safetensors.torch as stt\n"
    "    from safetensors import safe_open\n"
    "except Exception:\n"
    "    stt = None\n"
    "SPECS = [('a.f32','F32',[2,3]),('b.f64','F64',[5]),('c.i32','I32',[3,1,2]),('d.bool','BOOL',[7]),\n"
    "         ('e.f16','F16',[4]),('f.bf16','BF16',[2,2]),('g.i64','I64',[3]),('h.u8','U8',[5]),\n"
    "         ('i.scalar','F32',[]),('j.empty','F32',[0,3]),('k.rank8','F64',[1,2,1,2,1,2,1,1])]\n"
    "TD = {'F32':torch.float32,'F64':torch.float64,'I32':torch.int32,'BOOL':torch.bool,'F16':torch.float16,\n"
    "      'BF16':torch.bfloat16,'I64':torch.int64,'U8':torch.uint8}\n"
    "ALIGN = {'F64':8,'I64':8,'F32':4,'I32':4,'F16':2,'BF16':2,'BOOL':1,'U8':1}\n"
    "META = {'framework':'lethe','note':'\\u00fc \"quoted\"'}\n"
    "def value(k, i, dt):\n"
    "    if dt == 'BOOL': return (i + k) % 3 == 0\n"
    "    if dt in ('I32','I64'): return (i*7 % 13) - 6 + k\n"
    "    if dt == 'U8': return (i*7 % 13) + k\n"
    "    return (i*7 % 13) - 6 + k*0.25\n"
    "def expected(k, dt, shape):\n"
    "    n = 1\n"
    "    for s in shape: n *= s\n"
    "    return torch.tensor([value(k, i, dt) for i in range(n)], dtype=TD[dt]).reshape(shape)\n"
    "def read_st(path):\n"
    "    if stt:\n"
    "        with safe_open(path, 'pt') as f: meta = f.metadata()\n"
    "        return stt.load_file(path), meta\n"
    "    b = open(path, 'rb').read()\n"
    "    n = struct.unpack('<Q', b[:8])[0]\n"
    "    h = json.loads(b[8:8+n])\n"
    "    meta = h.pop('__metadata__', None)\n"
    "    data = b[8+n:]\n"
    "    out = {}\n"
    "    for name, e in h.items():\n"
    "        s, t = e['data_offsets']\n"
    "        buf = bytearray(data[s:t])\n"
    "        dt = TD[e['dtype']]\n"
    "        out[name] = torch.frombuffer(buf, dtype=dt).reshape(e['shape']) if buf else torch.zeros(e['shape'], dtype=dt)\n"
    "    return out, meta\n"
    "def to_bytes(t):\n"
    "    t = t.contiguous()\n"
    "    if t.dtype == torch.bfloat16: t = t.view(torch.int16)\n"
    "    return t.numpy().tobytes()\n"
    "def write_st(path, tensors, meta):\n"
    "    if stt:\n"
    "        return stt.save_file({k: v for k, (d, v) in tensors.items()}, path, metadata=meta)\n"
    "    items = sorted(tensors.items(), key=lambda kv: (-ALIGN[kv[1][0]], kv[0]))\n"
    "    header = {'__metadata__': meta}\n"
    "    off, blobs = 0, []\n"
    "    for name, (dt, t) in items:\n"
    "        bb = to_bytes(t)\n"
    "        header[name] = {'dtype': dt, 'shape': list(t.shape), 'data_offsets': [off, off + len(bb)]}\n"
    "        off += len(bb)\n"
    "        blobs.append(bb)\n"
    "    hj = json.dumps(header, separators=(',', ':')).encode()\n"
    "    hj += b' ' * ((8 - len(hj) % 8) % 8)\n"
    "    open(path, 'wb').write(struct.pack('<Q', len(hj)) + hj + b''.join(blobs))\n"
    "mode, path = sys.argv[1], sys.argv[2]\n"
    "print('using', 'safetensors' if stt else 'torch + the format by hand')\n"
    "if mode == 'read':\n"
    "    out, meta = read_st(path)\n"
    "    assert meta == META, meta\n"
    "    assert sorted(out) == sorted(s[0] for s in SPECS), sorted(out)\n"
    "    for k, (name, dt, shape) in enumerate(SPECS):\n"
    "        t = out[name]\n"
    "        assert t.dtype == TD[dt] and list(t.shape) == shape, (name, t.dtype, t.shape)\n"
    "        assert torch.equal(t, expected(k, dt, shape)), (name, t, expected(k, dt, shape))\n"
    "    print('read ok')\n"
    "else:\n"
    "    write_st(path, {name: (dt, expected(k, dt, shape)) for k, (name, dt, shape) in enumerate(SPECS)}, META)\n"
    "    print('write ok')\n";

static int run_py(const char *script, const char *mode, const char *path, char *log, size_t logsz) {
    char cmd[2048], out[700];
    snprintf(out, sizeof out, "%s/py_%s.log", th_tmpdir(), mode);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' %s '%s' > '%s' 2>&1", script, mode, path, out);
    int rc = system(cmd);
    FILE *f = fopen(out, "rb");
    size_t n = f ? fread(log, 1, logsz - 1, f) : 0;
    log[n] = 0;
    if (f)
        fclose(f);
    return rc;
}

static void test_python(void) {
    if (access("/usr/bin/python3", X_OK) != 0) {
        th_skip("safetensors_python_interchange", "/usr/bin/python3 is not installed");
        return;
    }
    int has_torch = system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") == 0;
    int has_st = system("/usr/bin/python3 -c 'import safetensors' > /dev/null 2>&1") == 0;
    if (!has_torch) {
        th_skip("safetensors_python_interchange", "/usr/bin/python3 cannot import torch (python3-torch%s)",
                has_st ? "; safetensors alone cannot build tensors here" : " or safetensors not installed");
        return;
    }
    char script[600], ours[600], theirs[600], err[LETHE_ERR_LEN], log[4096];
    snprintf(script, sizeof script, "%s/st_interop.py", th_tmpdir());
    snprintf(ours, sizeof ours, "%s/from_lethe.safetensors", th_tmpdir());
    snprintf(theirs, sizeof theirs, "%s/from_python.safetensors", th_tmpdir());
    fs_write_atomic(script, py_script, strlen(py_script), err);
    write_specs(ours, err);
    int rc = run_py(script, "read", ours, log, sizeof log);
    th_check(rc == 0, "safetensors_python_reads_ours", "python said: %s", log);
    printf("# %s", log);
    rc = run_py(script, "write", theirs, log, sizeof log);
    st_file *f = NULL;
    int rc2 = rc == 0 ? st_load(theirs, 0, &f, err) : -1;
    th_check(rc == 0 && rc2 == 0 && check_specs(f, 1) == 0, "safetensors_we_read_pythons",
             "python rc %d (%s), load rc %d (%s)", rc, log, rc2, err);
    st_free(f);
}

int main(void) {
    test_roundtrip();
    test_writer_refusals();
    test_corrupt_headers();
    test_truncation_and_flips();
    test_conversions();
    test_python();
    return th_exit();
}
