/* test_fuse_rows.c: attention's [B, heads, T, T] tensors are written at most
 * once per direction (issue 10; compiler/fuse_rows.c).
 *
 * tests/lth/attention_buffers.lth has a one-layer GPT-2 at B = 2, 2 heads,
 * T = 20, whose [B, heads, T, T] tensors are the only ones of 1600 elements
 * (6400 bytes in f32). `lethec -d memory` lists every workspace buffer of
 * each entry; the test counts those of that size:
 *   forward  the evaluation loss: e = exp(s - max(s)) only, not the scores
 *            (their GEMM runs inside the row max and exp kernel): 1
 *   step     AdamW's training step: e forward and d s backward, not the
 *            scores nor d e (the GEMM d e = dy @ v^T runs inside the d s
 *            kernel): 2
 * and that the same file compiles with --target=cuda, where the products
 * stay buffers (GEMMs run at the top level there) but the bound of two per
 * direction still holds. Then the rule on small products (`-d fusion`): a
 * GEMM read by its row max and an exp runs inside them; one also read
 * transposed, or with K deeper than twice the rows of a block, keeps its
 * buffer. Values: tests/lth/gradcheck.lth's attn cases. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static const char *const LTH = "tests/lth/attention_buffers.lth";
enum { TT_BYTES = 2 * 2 * 20 * 20 * 4 };

/* The number of TT_BYTES workspace buffers in entry `name`'s -d memory
 * section of out, -1 if the section is missing. */
static int count_tt(const char *out, const char *name) {
    char head[128];
    snprintf(head, sizeof head, "memory %s: ", name);
    const char *s = strstr(out, head);
    if (!s)
        return -1;
    s = strchr(s, '\n');
    int n = 0;
    while (s && s[1] == ' ') {
        const char *line = s + 1;
        s = strchr(line, '\n');
        const char *b = strstr(line, " bytes at ");
        if (!b || (s && b > s))
            continue;
        while (b > line && b[-1] != ' ')
            b--;
        n += atoll(b) == TT_BYTES;
    }
    return n;
}

static char *compile(const char *target, const char *tag) {
    char args[1024];
    snprintf(args, sizeof args, "'%s' %s --emit=header -o '%s/attn_%s.h' -d memory", LTH, target, th_tmpdir(), tag);
    char *out = NULL;
    int rc = th_run_lethec(args, &out);
    if (rc) {
        th_fail(tag, "lethec %s failed (status %d):\n%s", args, rc, out ? out : "");
        free(out);
        return NULL;
    }
    return out;
}

static const char *const RULE_SRC =
    "fn rowwise(a: f32[2, 8, 3], b: f32[2, 3, 8], c: f32[2, 8, 3]) =\n"
    "    exp(a @ b - max(a @ b, axis = -1, keep = true)) @ c\n"
    "fn transposed(a: f32[2, 8, 3], b: f32[2, 3, 8], c: f32[2, 8, 3]) =\n"
    "    (exp(a @ b) + transpose(a @ b, [0, 2, 1])) @ c\n"
    "fn deep(a: f32[2, 8, 40], b: f32[2, 40, 8], c: f32[2, 8, 3]) = exp(a @ b) @ c\n"
    "export rowwise_e = rowwise(f32[2, 8, 3], f32[2, 3, 8], f32[2, 8, 3])\n"
    "export transposed_e = transposed(f32[2, 8, 3], f32[2, 3, 8], f32[2, 8, 3])\n"
    "export deep_e = deep(f32[2, 8, 40], f32[2, 40, 8], f32[2, 8, 3])\n";

/* Whether entry `name`'s -d fusion section has a GEMM with consumers
 * ("matmul + "); -1 if the section is missing. */
static int has_rows_kernel(const char *out, const char *name) {
    char head[128];
    snprintf(head, sizeof head, "fusion %s: ", name);
    const char *s = strstr(out, head);
    if (!s)
        return -1;
    const char *end = strstr(s + 1, "\nfusion ");
    const char *hit = strstr(s, "matmul + ");
    return hit && (!end || hit < end);
}

static void test_rule(void) {
    char src[512], args[1024];
    snprintf(src, sizeof src, "%s/rule.lth", th_tmpdir());
    FILE *f = fopen(src, "w");
    if (!f) {
        th_fail("rule", "cannot write %s", src);
        return;
    }
    fputs(RULE_SRC, f);
    fclose(f);
    snprintf(args, sizeof args, "'%s' --emit=header -o '%s/rule.h' -d fusion", src, th_tmpdir());
    char *out = NULL;
    int rc = th_run_lethec(args, &out);
    th_check(!rc && has_rows_kernel(out, "rowwise_e") == 1, "rule: a GEMM runs inside its row max and exp",
             "status %d:\n%s", rc, out ? out : "");
    th_check(!rc && has_rows_kernel(out, "transposed_e") == 0, "rule: a product also read transposed keeps its buffer",
             "status %d:\n%s", rc, out ? out : "");
    th_check(!rc && has_rows_kernel(out, "deep_e") == 0, "rule: a product of a deep K keeps its buffer",
             "status %d:\n%s", rc, out ? out : "");
    free(out);
}

int main(void) {
    char *out = compile("", "cpu");
    if (out) {
        int fwd = count_tt(out, "forward"), step = count_tt(out, "step");
        th_check(fwd == 1, "cpu forward: one [B, H, T, T] buffer (e)", "%d such buffers:\n%s", fwd, out);
        th_check(step == 2, "cpu training step: two [B, H, T, T] buffers (e, d s)", "%d such buffers:\n%s", step, out);
        free(out);
    }
    out = compile("--target=cuda", "cuda");
    if (out) {
        int fwd = count_tt(out, "forward"), step = count_tt(out, "step");
        th_check(fwd >= 1 && fwd <= 2 && step >= 2 && step <= 4, "cuda compiles, at most two per direction",
                 "forward %d, step %d:\n%s", fwd, step, out);
        free(out);
    }
    test_rule();
    return th_exit();
}
