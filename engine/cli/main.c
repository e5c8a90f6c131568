/* main.c: the `diffuse` command-line tool (contract in DESIGN.md):
 *   diffuse generate --model PATH|default --prompt TEXT ... --output OUT.png
 *   diffuse refcheck DIR
 *   diffuse tokenize [--vocab PATH] TEXT
 *   diffuse info --model PATH
 * Errors go to stderr with a non-zero exit status; a bad argument is named.
 * The status says the kind of failure (exit_status): 2 a bad argument, 3 a
 * file that cannot be read or written, 4 a malformed file or a model Diffuse
 * does not run, 5 not enough memory, 6 cancelled, 7 numbers gone NaN or
 * infinite; 1 anything else.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../diffuse.h"
#include "png.h"

#define STR_(x) #x
#define STR(x) STR_(x)

static int usage(void)
{
    fprintf(
        stderr,
        "usage: diffuse generate --model PATH|default --prompt TEXT [--negative TEXT] [--seed N]\n"
        "                        [--steps N] [--cfg F] [--sampler "
        "euler|euler_a|ddim|dpmpp_2m|lcm|pndm]\n"
        "                        [--karras] [--spacing leading|linspace|trailing] [--width W] "
        "[--height H]\n"
        "                        [--count N] [--init IMAGE.png --strength F] [--mask MASK.png]\n"
        "                        [--threads N] [--vocab PATH] [--prediction epsilon|v] "
        "[--verbose]\n"
        "                        [--original-size WxH] [--crop-offset X,Y] [--target-size WxH]\n"
        "                        [--decoder vae|taesd|PATH] [--encoder vae|taesd|PATH]\n"
        "                        [--preview PATH.png [--preview-every N]]\n"
        "                        [--clip-skip N] [--rng philox|torch-cpu|diffuse] [--from "
        "IMAGE.png]\n"
        "                        [--lora FILE[:WEIGHT]]... [--lora-dir DIR]\n"
        "                        [--masked-content original|latent-noise] [--decode-rows "
        "N|auto]\n"
        "                        --output OUT.png\n"
        "       diffuse refcheck REFERENCE_DIR\n"
        "       diffuse tokenize [--vocab PATH] TEXT\n"
        "       diffuse info --model PATH [--vocab PATH]\n");
    return 2;
}

/* The engine's kinds of failure in the order of diffuse_status: ARGUMENT 2 ... NONFINITE 7. */
static int exit_status(diffuse_status st)
{
    return st == DIFFUSE_OK ? 0 : (int)st + 1;
}

static int bad_arg(const char *name, const char *value, const char *why)
{
    fprintf(stderr, "diffuse: %s '%s': %s\n", name, value ? value : "", why);
    return 2;
}

/* A file argument that failed as `kind`: named like any argument, its status the kind's. */
static int bad_file(const char *name, const char *path, const char *why, diffuse_status kind)
{
    bad_arg(name, path, why);
    return exit_status(kind);
}

static bool parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* "AxB" (sep 'x') or "A,B" (sep ','), both in lo..hi. */
static bool parse_pair(const char *s, char sep, long lo, long hi, int *a, int *b)
{
    char first[32];
    const char *mid = strchr(s, sep);
    long x, y;
    if (!mid || (size_t)(mid - s) >= sizeof first)
        return false;
    snprintf(first, sizeof first, "%.*s", (int)(mid - s), s);
    if (!parse_int(first, lo, hi, &x) || !parse_int(mid + 1, lo, hi, &y))
        return false;
    *a = (int)x;
    *b = (int)y;
    return true;
}

static bool parse_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end)
        return false;
    *out = v;
    return true;
}

/* A number in lo..hi (false otherwise; number_problem says which way). */
static bool parse_number(const char *s, float lo, float hi, float *out)
{
    float v;
    return parse_float(s, &v) && v >= lo && v <= hi && (*out = v, true);
}

static const char *number_problem(const char *s, float lo, float hi)
{
    static char why[96];
    char *end;
    strtod(s, &end);
    if (end == s || *end)
        return "not a number";
    snprintf(why, sizeof why, "out of range: expected %g..%g", lo, hi);
    return why;
}

/* "default": the bundled model as diffuse_default_model_path finds it, this
 * binary's own copies being ../models/default (a build tree) and
 * ../share/diffuse/models/default (an installed one). NULL, with err set,
 * when there is none. */
static const char *resolve_model(const char *name, char *buf, size_t size, char *err,
                                 size_t err_size)
{
    if (strcmp(name, "default") != 0)
        return name;
    char exe[PATH_MAX], own[2][PATH_MAX + 64];
    const char *beside[3] = {NULL, NULL, NULL};
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = 0;
        snprintf(own[0], sizeof own[0], "%s/../models/default", exe);
        snprintf(own[1], sizeof own[1], "%s/../share/diffuse/models/default", exe);
        beside[0] = own[0];
        beside[1] = own[1];
    }
    return diffuse_default_model_path(beside, buf, size, err, err_size) == DIFFUSE_OK ? buf : NULL;
}

static void notice(void *user, const char *message)
{
    fprintf(stderr, "diffuse: %s\n", message);
}

static int progress(void *user, int image, int count, int step, int steps)
{
    static int shown_image = -1, shown_step = -1;
    if (image == shown_image && step == shown_step)
        return 0; /* a decode in bands asking between its bands */
    shown_image = image;
    shown_step = step;
    fprintf(stderr, "\rimage %d/%d  step %d/%d", image + 1, count, step, steps);
    if (step == steps)
        fputc('\n', stderr);
    return 0;
}

/* --preview PATH: each preview replaces the PNG (written whole, then renamed). */
static int write_preview(void *user, int image, int step, int steps, const float *rgb, int w, int h)
{
    char err[DIFFUSE_ERROR_SIZE];
    if (png_write_rgb(user, rgb, w, h, NULL, NULL, err, sizeof err))
        fprintf(stderr, "\ndiffuse: preview: %s\n", err);
    return 0;
}

/* ------------------------------------------------------------------ generate */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* --verbose: the phases of the run and its memory, on stderr, beside what
 * diffuse_request_cost said before it ran. */
static void print_stats(const diffuse_stats *s, const diffuse_cost *c, double load_s, double run_s)
{
    fprintf(stderr, "load          %8.2f s\n", load_s);
    fprintf(stderr, "text encoder  %8.2f s  %.1f GFLOP (planned %.1f)\n", s->text_s, s->text_gflop,
            c->text_gflop);
    if (s->vae_encode_s > 0)
        fprintf(stderr, "vae encode    %8.2f s\n", s->vae_encode_s);
    if (s->unet_passes)
        fprintf(stderr,
                "unet          %8.2f s  %d passes, %.0f evals, %.2f s per eval, "
                "%.1f GFLOP/s dense-equivalent, %.1f GFLOP (planned %.1f)\n",
                s->unet_s, s->unet_passes, s->unet_evals, s->unet_s / s->unet_evals,
                s->unet_gflop / s->unet_s, s->unet_gflop, c->unet_gflop);
    if (s->decode_rows)
        fprintf(stderr, "vae decode    %8.2f s  in bands of %d rows\n", s->vae_decode_s,
                s->decode_rows);
    else
        fprintf(stderr, "vae decode    %8.2f s\n", s->vae_decode_s);
    fprintf(stderr, "vae           %8.1f GFLOP (planned %.1f)\n", s->vae_gflop, c->vae_gflop);
    fprintf(stderr, "generate      %8.2f s  (estimated %.2f s)\n", run_s, c->seconds);
    fprintf(stderr, "peak RSS      %8.0f MiB  (predicted %.0f MiB)\n", s->peak_rss / 1048576.0,
            s->predicted_peak / 1048576.0);
}

typedef struct gen_opts {
    const char *model, *output, *init, *mask, *vocab, *from;
    bool given[256]; /* by option code: what the command line set */
    bool seed_given, verbose;
    diffuse_request req;
    diffuse_load_params load;
    diffuse_parameters from_params;        /* --from's settings, owned */
    diffuse_lora loras[DIFFUSE_MAX_LORAS]; /* --lora FILE[:WEIGHT], in order */
    int nloras;
} gen_opts;

/* FILE or FILE:WEIGHT (the last colon, when a number follows it). */
static int add_lora(gen_opts *o, const char *arg)
{
    if (o->nloras == DIFFUSE_MAX_LORAS || !*arg)
        return -1;
    diffuse_lora *l = &o->loras[o->nloras];
    const char *colon = strrchr(arg, ':');
    float w = 1.0f;
    static char paths[DIFFUSE_MAX_LORAS][4096];
    if (colon && parse_float(colon + 1, &w) && w >= -100 && w <= 100)
        snprintf(paths[o->nloras], sizeof paths[0], "%.*s", (int)(colon - arg), arg);
    else if (colon && colon[1] && !strchr(colon, '/'))
        return -1; /* "film:abc": a weight that is not one */
    else
        snprintf(paths[o->nloras], sizeof paths[0], "%s", arg), w = 1.0f;
    *l = (diffuse_lora){.path = paths[o->nloras], .weight = w, .unet_weight = w};
    o->nloras++;
    return 0;
}

/* --from: the PNG's parameters text fills what the command line left unset. */
static int from_png(gen_opts *o)
{
    char err[DIFFUSE_ERROR_SIZE];
    diffuse_status why;
    char *text = png_read_text(o->from, "parameters", &why, err, sizeof err);
    if (!text)
        return bad_file("--from", o->from, err, why);
    diffuse_parameters *p = &o->from_params;
    diffuse_status st = diffuse_parameters_parse(text, p, err, sizeof err);
    free(text);
    if (st != DIFFUSE_OK)
        return bad_arg("--from", o->from, err);
    diffuse_request *r = &o->req;
    const bool *g = o->given;
    if (!g['p'])
        r->prompt = p->prompt;
    if (!g['n'])
        r->negative_prompt = p->negative_prompt;
    if (!g['s'] && p->has_seed)
        r->seed = p->seed, o->seed_given = true;
    if (!g['S'] && p->steps)
        r->steps = p->steps, o->given['S'] = true;
    if (!g['c'] && p->guidance >= 0)
        r->guidance = p->guidance, o->given['c'] = true;
    if (!g['a'] && p->sampler >= 0)
        r->sampler = (diffuse_sampler)p->sampler, o->given['a'] = true;
    if (!g['k'] && p->karras >= 0)
        r->karras = p->karras;
    if (!g['W'] && p->width)
        r->width = p->width;
    if (!g['H'] && p->height)
        r->height = p->height;
    if (!g['t'] && p->strength > 0)
        r->strength = p->strength;
    if (!g['K'] && p->clip_skip)
        r->clip_skip = p->clip_skip;
    if (!g['g'] && p->rng >= 0)
        r->rng = (diffuse_rng_kind)p->rng;
    if (!g['x'] && p->masked_content >= 0)
        r->masked_content = (diffuse_masked_content)p->masked_content;
    if (!g['L'] && p->loras) { /* "PATH:W, PATH:W" */
        char *list = strdup(p->loras), *save = NULL;
        for (char *t = list ? strtok_r(list, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save))
            if (add_lora(o, t + strspn(t, " ")))
                fprintf(stderr, "diffuse: --from %s: LoRA '%s' left out\n", o->from, t);
        free(list);
    }
    diffuse_size_cond *sc = &r->size_cond, *fc = &p->size_cond;
    if (!g['O'])
        sc->original_width = fc->original_width, sc->original_height = fc->original_height;
    if (!g['X'])
        sc->crop_left = fc->crop_left, sc->crop_top = fc->crop_top;
    if (!g['G'])
        sc->target_width = fc->target_width, sc->target_height = fc->target_height;
    if (!o->model && p->model) /* a name as the PNG gives it: a path, or "default" */
        o->model = p->model;
    if (p->inpaint_area == 1) /* the plug-in's "Selected area"; the CLI repaints the whole image */
        fprintf(stderr, "diffuse: --from %s: not used: Inpaint area: Only masked\n", o->from);
    if (p->extra)
        fprintf(stderr, "diffuse: --from %s: not used: %s\n", o->from, p->extra);
    return 0;
}

static int parse_generate(int argc, char **argv, gen_opts *o)
{
    static const struct option opts[] = {{"model", 1, 0, 'm'},
                                         {"prompt", 1, 0, 'p'},
                                         {"negative", 1, 0, 'n'},
                                         {"seed", 1, 0, 's'},
                                         {"steps", 1, 0, 'S'},
                                         {"cfg", 1, 0, 'c'},
                                         {"sampler", 1, 0, 'a'},
                                         {"karras", 0, 0, 'k'},
                                         {"spacing", 1, 0, 'P'},
                                         {"width", 1, 0, 'W'},
                                         {"height", 1, 0, 'H'},
                                         {"count", 1, 0, 'C'},
                                         {"init", 1, 0, 'i'},
                                         {"strength", 1, 0, 't'},
                                         {"mask", 1, 0, 'M'},
                                         {"threads", 1, 0, 'T'},
                                         {"output", 1, 0, 'o'},
                                         {"vocab", 1, 0, 'v'},
                                         {"prediction", 1, 0, 'r'},
                                         {"verbose", 0, 0, 'V'},
                                         {"original-size", 1, 0, 'O'},
                                         {"crop-offset", 1, 0, 'X'},
                                         {"target-size", 1, 0, 'G'},
                                         {"decoder", 1, 0, 'D'},
                                         {"encoder", 1, 0, 'E'},
                                         {"preview", 1, 0, 'w'},
                                         {"preview-every", 1, 0, 'e'},
                                         {"clip-skip", 1, 0, 'K'},
                                         {"rng", 1, 0, 'g'},
                                         {"from", 1, 0, 'f'},
                                         {"lora", 1, 0, 'L'},
                                         {"lora-dir", 1, 0, 'l'},
                                         {"masked-content", 1, 0, 'x'},
                                         {"decode-rows", 1, 0, 'B'},
                                         {0, 0, 0, 0}};
    diffuse_size_cond *sc = &o->req.size_cond;
    int c;
    long v;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        o->given[c & 255] = true;
        switch (c) {
        case 'm':
            o->model = optarg;
            break;
        case 'V':
            o->verbose = true;
            break;
        case 'p':
            o->req.prompt = optarg;
            break;
        case 'n':
            o->req.negative_prompt = optarg;
            break;
        case 's':
            if (!parse_int(optarg, -1, LONG_MAX, &v))
                return bad_arg("--seed", optarg, "not a seed (-1 = random)");
            o->seed_given = v >= 0;
            o->req.seed = (uint64_t)v;
            break;
        case 'S':
            if (!parse_int(optarg, 1, 1000, &v))
                return bad_arg("--steps", optarg, "expected 1..1000");
            o->req.steps = (int)v;
            break;
        case 'c':
            if (!parse_number(optarg, 0, DIFFUSE_MAX_GUIDANCE, &o->req.guidance))
                return bad_arg("--cfg", optarg, number_problem(optarg, 0, DIFFUSE_MAX_GUIDANCE));
            break;
        case 'a':
            if (diffuse_sampler_from_label(optarg) < 0)
                return bad_arg("--sampler", optarg,
                               "expected euler, euler_a, ddim, dpmpp_2m, lcm or pndm");
            o->req.sampler = (diffuse_sampler)diffuse_sampler_from_label(optarg);
            break;
        case 'k':
            o->req.karras = 1;
            break;
        case 'P':
            if (diffuse_spacing_parse(optarg) < 0)
                return bad_arg("--spacing", optarg, "expected leading, linspace or trailing");
            o->req.spacing = (diffuse_spacing)diffuse_spacing_parse(optarg);
            break;
        case 'W':
        case 'H':
            if (!parse_int(optarg, 8, DIFFUSE_MAX_SIDE, &v) || v % 8)
                return bad_arg(c == 'W' ? "--width" : "--height", optarg,
                               "expected a multiple of 8 from 8 to " STR(DIFFUSE_MAX_SIDE));
            *(c == 'W' ? &o->req.width : &o->req.height) = (int)v;
            break;
        case 'C':
            if (!parse_int(optarg, 1, 100, &v))
                return bad_arg("--count", optarg, "expected 1..100");
            o->req.count = (int)v;
            break;
        case 'i':
            o->init = optarg;
            break;
        case 't':
            if (!parse_float(optarg, &o->req.strength) ||
                !(o->req.strength > 0 && o->req.strength <= 1))
                return bad_arg("--strength", optarg, "expected a number in (0, 1]");
            break;
        case 'M':
            o->mask = optarg;
            break;
        case 'T':
            if (!parse_int(optarg, 0, 1024, &v))
                return bad_arg("--threads", optarg, "expected 0..1024");
            o->load.threads = (int)v;
            break;
        case 'o':
            o->output = optarg;
            break;
        case 'v':
            o->load.vocab_path = optarg;
            break;
        case 'r':
            if (strcmp(optarg, "epsilon") && strcmp(optarg, "v"))
                return bad_arg("--prediction", optarg, "expected epsilon or v");
            o->load.prediction =
                optarg[0] == 'v' ? DIFFUSE_PREDICTION_V : DIFFUSE_PREDICTION_EPSILON;
            break;
        case 'O':
            /* ranges: the engine's check names them */
            if (!parse_pair(optarg, 'x', 0, INT_MAX, &sc->original_width, &sc->original_height))
                return bad_arg("--original-size", optarg, "expected WxH");
            break;
        case 'X':
            if (!parse_pair(optarg, ',', 0, INT_MAX, &sc->crop_left, &sc->crop_top))
                return bad_arg("--crop-offset", optarg, "expected X,Y (pixels, not negative)");
            break;
        case 'G':
            if (!parse_pair(optarg, 'x', 0, INT_MAX, &sc->target_width, &sc->target_height))
                return bad_arg("--target-size", optarg, "expected WxH");
            break;
        case 'D':
        case 'E': { /* vae, taesd (the one beside the model) or a TAESD's path */
            int *fast = c == 'D' ? &o->req.fast_decode : &o->req.fast_encode;
            *fast = strcmp(optarg, "vae") != 0;
            /* a TAESD folder or either of its two files: the other half is
             * found beside it, so the decoder's path serves both */
            if (*fast && strcmp(optarg, "taesd") != 0 && (c == 'D' || !o->load.taesd_path))
                o->load.taesd_path = optarg;
            break;
        }
        case 'B': /* the engine checks it against the height */
            if (strcmp(optarg, "auto") && !parse_int(optarg, 8, DIFFUSE_MAX_SIDE, &v))
                return bad_arg("--decode-rows", optarg,
                               "expected auto or image rows per band (a multiple of 8)");
            o->req.decode_rows = strcmp(optarg, "auto") ? (int)v : 0;
            break;
        case 'w':
            o->req.preview = write_preview;
            o->req.preview_user = optarg;
            if (!o->req.preview_every)
                o->req.preview_every = 1;
            break;
        case 'e':
            if (!parse_int(optarg, 1, 1000, &v))
                return bad_arg("--preview-every", optarg, "expected 1..1000");
            o->req.preview_every = (int)v;
            break;
        case 'K':
            if (!parse_int(optarg, 1, DIFFUSE_MAX_CLIP_SKIP, &v))
                return bad_arg("--clip-skip", optarg, "expected 1..12 (1: the last layer)");
            o->req.clip_skip = (int)v;
            break;
        case 'g':
            if (diffuse_rng_kind_parse(optarg, &o->req.rng))
                return bad_arg("--rng", optarg, "expected philox, torch-cpu or diffuse");
            break;
        case 'f':
            o->from = optarg;
            break;
        case 'L':
            if (add_lora(o, optarg))
                return bad_arg("--lora", optarg,
                               o->nloras == DIFFUSE_MAX_LORAS ? "too many (at most 16)"
                                                              : "expected FILE or FILE:WEIGHT");
            break;
        case 'l':
            o->req.lora_dir = optarg;
            break;
        case 'x':
            if (strcmp(optarg, "original") && strcmp(optarg, "latent-noise"))
                return bad_arg("--masked-content", optarg, "expected original or latent-noise");
            o->req.masked_content =
                optarg[0] == 'l' ? DIFFUSE_MASKED_LATENT_NOISE : DIFFUSE_MASKED_ORIGINAL;
            break;
        default:
            return usage();
        }
    }
    if (optind < argc)
        return bad_arg("argument", argv[optind], "unexpected");
    if (o->req.preview_every && !o->req.preview)
        return bad_arg("--preview-every", "", "needs --preview PATH.png");
    int rc;
    if (o->from && (rc = from_png(o)))
        return rc;
    if (!o->model)
        return bad_arg("--model", "", "missing");
    if (!o->req.prompt)
        return bad_arg("--prompt", "", "missing");
    if (!o->output)
        return bad_arg("--output", "", "missing");
    if (o->mask && !o->init)
        return bad_arg("--mask", o->mask, "needs --init");
    return 0;
}

/* The output's folder must exist and take files: said before any work, with
 * the system's reason. */
static int check_output(const char *arg, const char *out)
{
    char dir[4096];
    struct stat st;
    snprintf(dir, sizeof dir, "%s", out);
    char *slash = strrchr(dir, '/');
    if (slash)
        slash == dir ? (void)(dir[1] = 0) : (void)(*slash = 0);
    else
        snprintf(dir, sizeof dir, ".");
    if (stat(out, &st) == 0 && S_ISDIR(st.st_mode))
        return bad_arg(arg, out, "is a folder; give a file name such as OUT.png");
    /* the image is written beside it and renamed over it: never over a device
     * (/dev/null, /dev/full), a pipe or a socket */
    if (stat(out, &st) == 0 && !S_ISREG(st.st_mode))
        return bad_arg(arg, out,
                       "is not a regular file (a device or a pipe); give a "
                       "file name such as OUT.png");
    if (stat(dir, &st) != 0 || access(dir, W_OK) != 0) {
        char why[300];
        snprintf(why, sizeof why, "cannot write into %s: %s", dir, strerror(errno));
        return bad_file(arg, out, why, DIFFUSE_ERR_IO);
    }
    return 0;
}

/* OUT.png -> OUT-3.png for image 3 of several. */
static void output_name(char *buf, size_t size, const char *out, int index, int count)
{
    if (count == 1) {
        snprintf(buf, size, "%s", out);
        return;
    }
    const char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
    if (!dot || (slash && dot < slash))
        dot = out + strlen(out);
    snprintf(buf, size, "%.*s-%d%s", (int)(dot - out), out, index + 1, dot);
}

static int load_inputs(gen_opts *o, float **init, float **mask)
{
    char err[DIFFUSE_ERROR_SIZE];
    int w, h, mw, mh;
    diffuse_status why;
    if (!o->init)
        return 0;
    if (!(*init = png_read(o->init, 3, DIFFUSE_MAX_SIDE, &w, &h, &why, err, sizeof err)))
        return bad_file("--init", o->init, err, why);
    if (o->req.width && o->req.height && (w != o->req.width || h != o->req.height))
        return bad_arg("--init", o->init, "image size differs from --width/--height");
    if (w % 8 || h % 8)
        return bad_arg("--init", o->init, "width and height must be multiples of 8");
    o->req.width = w;
    o->req.height = h;
    o->req.init_image = *init;
    if (o->mask) {
        if (!(*mask = png_read(o->mask, 1, DIFFUSE_MAX_SIDE, &mw, &mh, &why, err, sizeof err)))
            return bad_file("--mask", o->mask, err, why);
        if (mw != w || mh != h)
            return bad_arg("--mask", o->mask, "mask size differs from the init image");
        o->req.mask = *mask;
    }
    return 0;
}

static int write_outputs(const gen_opts *o, const diffuse_image *images, const char *model)
{
    const diffuse_request *r = &o->req;
    char loras_buf[DIFFUSE_MAX_LORAS * 4128] = "", *loras = NULL;
    for (int i = 0; i < o->nloras; i++) { /* --lora's files: "PATH:W, PATH:W" */
        size_t n = strlen(loras_buf);
        snprintf(loras_buf + n, sizeof loras_buf - n, "%s%s:%g", i ? ", " : "", o->loras[i].path,
                 o->loras[i].weight);
        loras = loras_buf;
    }
    for (int i = 0; i < r->count; i++) {
        char path[4096], err[DIFFUSE_ERROR_SIZE];
        diffuse_parameters p = {.prompt = r->prompt,
                                .negative_prompt = r->negative_prompt,
                                .steps = r->steps,
                                .sampler = (int)r->sampler,
                                .karras = r->karras,
                                .guidance = r->guidance,
                                .has_seed = 1,
                                .seed = images[i].seed,
                                .width = r->width,
                                .height = r->height,
                                .model = model,
                                .strength = r->init_image ? r->strength : 0,
                                .clip_skip = r->clip_skip,
                                .rng = (int)r->rng,
                                .size_cond = r->size_cond,
                                .loras = loras,
                                .masked_content = r->mask ? (int)r->masked_content : -1};
        char *text = diffuse_parameters_text(&p);
        output_name(path, sizeof path, o->output, i, r->count);
        if (!text)
            snprintf(err, sizeof err, "out of memory");
        int failed = !text || png_write_rgb(path, images[i].pixels, images[i].width,
                                            images[i].height, "parameters", text, err, sizeof err);
        free(text);
        if (failed) {
            fprintf(stderr, "diffuse: %s\n", err);
            return exit_status(text ? DIFFUSE_ERR_IO : DIFFUSE_ERR_MEMORY);
        }
        fprintf(stderr, "wrote %s (seed %llu)\n", path, (unsigned long long)images[i].seed);
    }
    return 0;
}

static int cmd_generate(int argc, char **argv)
{
    gen_opts o = {.req = diffuse_request_default(), .load = diffuse_load_params_default()};
    o.req.width = o.req.height = 0;
    o.req.prompt = NULL; /* the default is "", so --prompt could never be missing */
    int rc = parse_generate(argc, argv, &o);
    if (rc) {
        diffuse_parameters_free(&o.from_params);
        return rc;
    }
    float *init = NULL, *mask = NULL;
    char buf[4096], err[DIFFUSE_ERROR_SIZE];
    diffuse_image *images = NULL;
    diffuse_model *model = NULL;
    if ((rc = check_output("--output", o.output)) ||
        (o.req.preview && (rc = check_output("--preview", o.req.preview_user))) ||
        (rc = load_inputs(&o, &init, &mask)))
        goto done;
    if (!o.seed_given)
        o.req.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    const char *path = resolve_model(o.model, buf, sizeof buf, err, sizeof err);
    double t0 = now_s();
    diffuse_status st =
        path ? diffuse_model_open(path, &o.load, &model, err, sizeof err) : DIFFUSE_ERR_IO;
    if (st != DIFFUSE_OK) {
        bad_arg("--model", o.model, err);
        rc = exit_status(st);
        goto done;
    }
    const double load_s = now_s() - t0;
    diffuse_model_info info;
    diffuse_model_get_info(model, &info);
    if (info.suggested_sampler >= 0) { /* the model's own settings, where not given */
        if (!o.given['S'])
            o.req.steps = info.suggested_steps;
        if (!o.given['c'])
            o.req.guidance = info.suggested_guidance;
        if (!o.given['a'])
            o.req.sampler = (diffuse_sampler)info.suggested_sampler;
    }
    if (!o.req.width)
        o.req.width = info.native_size;
    if (!o.req.height)
        o.req.height = info.native_size;
    o.req.progress = progress;
    o.req.loras = o.loras;
    o.req.lora_count = o.nloras;
    o.req.notice = notice;
    diffuse_stats stats;
    if (o.verbose)
        o.req.stats = &stats;
    if (!(images = calloc((size_t)o.req.count, sizeof *images))) {
        fprintf(stderr, "diffuse: out of memory for %d images\n", o.req.count);
        rc = exit_status(DIFFUSE_ERR_MEMORY);
        goto done;
    }
    diffuse_cost cost = {0};
    if (o.verbose)
        cost = diffuse_request_cost(model, &o.req);
    const double t1 = now_s();
    st = diffuse_generate(model, &o.req, images, err, sizeof err);
    if (o.verbose)
        print_stats(&stats, &cost, load_s, now_s() - t1);
    if (st != DIFFUSE_OK) {
        fprintf(stderr, "diffuse: %s\n", err);
        rc = exit_status(st);
        goto done;
    }
    rc = write_outputs(&o, images, o.model);
    for (int i = 0; i < o.req.count; i++)
        diffuse_image_free(&images[i]);
done:
    free(images);
    diffuse_parameters_free(&o.from_params);
    diffuse_model_free(model);
    free(init);
    free(mask);
    return rc;
}

/* ------------------------------------------------------------------ others */

static void print_line(void *user, const char *line)
{
    printf("%s\n", line);
    fflush(stdout);
}

static int cmd_refcheck(int argc, char **argv)
{
    if (argc != 2)
        return usage();
    char err[DIFFUSE_ERROR_SIZE];
    int passed = 0, failed = 0;
    if (diffuse_refcheck(argv[1], print_line, NULL, &passed, &failed, err, sizeof err) !=
        DIFFUSE_OK) {
        fprintf(stderr, "diffuse: refcheck %s: %s\n", argv[1], err);
        failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

static const char *default_vocab(char *buf, size_t size)
{
    const char *env = getenv("DIFFUSE_VOCAB"), *home = getenv("HOME");
    if (env)
        return env;
    snprintf(buf, size, "%s/.local/share/diffuse/bpe_simple_vocab_16e6.txt.gz", home ? home : "");
    return buf;
}

static int cmd_tokenize(int argc, char **argv)
{
    char buf[4096], err[DIFFUSE_ERROR_SIZE];
    const char *vocab = NULL, *text = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--vocab") == 0 && i + 1 < argc)
            vocab = argv[++i];
        else if (!text)
            text = argv[i];
        else
            return bad_arg("argument", argv[i], "unexpected");
    }
    if (!text)
        return bad_arg("TEXT", "", "missing");
    int32_t ids[DIFFUSE_MAX_TOKENS];
    diffuse_status st = diffuse_tokenize(vocab ? vocab : default_vocab(buf, sizeof buf), text, ids,
                                         err, sizeof err);
    if (st != DIFFUSE_OK) {
        bad_arg("--vocab", vocab ? vocab : buf, err);
        return exit_status(st);
    }
    for (int i = 0; i < DIFFUSE_MAX_TOKENS; i++)
        printf("%d%c", ids[i], i + 1 < DIFFUSE_MAX_TOKENS ? ' ' : '\n');
    return 0;
}

static int cmd_info(int argc, char **argv)
{
    char buf[4096], err[DIFFUSE_ERROR_SIZE];
    const char *model_arg = NULL;
    diffuse_load_params p = diffuse_load_params_default();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            model_arg = argv[++i];
        else if (strcmp(argv[i], "--vocab") == 0 && i + 1 < argc)
            p.vocab_path = argv[++i];
        else if (strcmp(argv[i], "--decoder") == 0 && i + 1 < argc)
            p.taesd_path = argv[++i];
        else
            return bad_arg("argument", argv[i], "unexpected");
    }
    if (!model_arg)
        return bad_arg("--model", "", "missing");
    const char *path = resolve_model(model_arg, buf, sizeof buf, err, sizeof err);
    diffuse_model *m = NULL;
    diffuse_status st = path ? diffuse_model_open(path, &p, &m, err, sizeof err) : DIFFUSE_ERR_IO;
    if (st != DIFFUSE_OK) {
        fprintf(stderr, "diffuse: --model '%s': %s\n", model_arg, err);
        return exit_status(st);
    }
    diffuse_model_info in;
    diffuse_model_get_info(m, &in);
    printf("family: %s\nname: %s\nlayout: %s\ndtype: %s\nprediction: %s\n", in.family,
           in.family_name, in.layout, in.dtype,
           in.prediction == DIFFUSE_PREDICTION_V ? "v_prediction" : "epsilon");
    printf("native size: %dx%d\nlatent: %d channels, 1/%d scale\n", in.native_size, in.native_size,
           in.latent_channels, in.vae_scale);
    if (in.inpainting)
        printf("inpainting: yes (the UNet also reads a mask and the masked image)\n");
    printf("unet channels:");
    for (int l = 0; l < in.unet_levels; l++)
        printf(" %d", in.unet_channels[l]);
    printf("\ncontext dim: %d\ntext encoder: width %d, %d layers, %d heads, vocabulary %d\n",
           in.context_dim, in.text_width, in.text_layers, in.text_heads, in.vocab_size);
    if (in.has_fast_decoder || in.has_fast_encoder)
        printf("fast autoencoder: TAESD (%s%s)\n", in.has_fast_encoder ? "encoder" : "",
               in.has_fast_decoder ? (in.has_fast_encoder ? " and decoder" : "decoder") : "");
    if (in.text2_width)
        printf("text encoder 2: width %d, %d layers, %d heads, pooled %d\n", in.text2_width,
               in.text2_layers, in.text2_heads, in.pooled_dim);
    printf("parameters: unet %lld, vae %lld, text %lld, total %lld\n", (long long)in.params_unet,
           (long long)in.params_vae, (long long)in.params_text,
           (long long)(in.params_unet + in.params_vae + in.params_text));
    if (in.suggested_sampler >= 0)
        printf("suggested: %s, %d steps, guidance %g (from the model folder; generate uses them "
               "unless told)\n",
               diffuse_sampler_name((diffuse_sampler)in.suggested_sampler), in.suggested_steps,
               in.suggested_guidance);
    diffuse_model_free(m);
    return 0;
}

int main(int argc, char **argv)
{
    diffuse_process_init(argv);
    if (argc < 2)
        return usage();
    const char *cmd = argv[1];
    argv[1] = argv[0];
    if (strcmp(cmd, "generate") == 0)
        return cmd_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "refcheck") == 0)
        return cmd_refcheck(argc - 1, argv + 1);
    if (strcmp(cmd, "tokenize") == 0)
        return cmd_tokenize(argc - 1, argv + 1);
    if (strcmp(cmd, "info") == 0)
        return cmd_info(argc - 1, argv + 1);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage();
        return 0;
    }
    fprintf(stderr, "diffuse: unknown command '%s'\n", cmd);
    return usage();
}
