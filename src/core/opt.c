/*
 * The table-driven option parser, defaults, --help printer and canonical text (see
 * ddp/opt.h). Numbers are parsed strictly: the whole text must be a number of the
 * expected form and in range, or the option is named in the error with what it expects.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/opt.h"

/* Column where the help texts start in --help. */
#define HELP_COLUMN 26

void ddp_opt_format_bytes(uint64_t b, char *buf, size_t cap) {
    const uint64_t g = 1ull << 30, m = 1ull << 20, k = 1ull << 10;
    if (b >= g && b % g == 0)
        snprintf(buf, cap, "%lluG", (unsigned long long)(b / g));
    else if (b >= m && b % m == 0)
        snprintf(buf, cap, "%lluM", (unsigned long long)(b / m));
    else if (b >= k && b % k == 0)
        snprintf(buf, cap, "%lluK", (unsigned long long)(b / k));
    else
        snprintf(buf, cap, "%llu", (unsigned long long)b);
}

const ddp_opt *ddp_opt_find(const ddp_opt *opts, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (opts[i].name && strcmp(opts[i].name, name) == 0) return &opts[i];
    return NULL;
}

/* ---- checking the tables themselves ----------------------------------------------- */

/* The field size each kind writes: a table entry that disagrees is a bug in ddp, found
 * before anything is written through it. */
static int size_fits(const ddp_opt *o) {
    switch (o->kind) {
    case DDP_OPT_HEADING: return 1;
    case DDP_OPT_FLAG:
    case DDP_OPT_INT:
    case DDP_OPT_CHOICE: return o->size == sizeof(int) && (o->kind != DDP_OPT_CHOICE || o->choices);
    case DDP_OPT_U64: return o->size == sizeof(uint64_t);
    case DDP_OPT_FLOAT: return o->size == sizeof(float);
    case DDP_OPT_MB:
    case DDP_OPT_BYTES: return o->size == sizeof(size_t);
    case DDP_OPT_PATH: return o->size >= 2;
    case DDP_OPT_CUSTOM: return o->parse != NULL && o->size > 0;
    }
    return 0;
}

static ddp_status check_tables(const ddp_opt_table *t, int nt) {
    for (int a = 0; a < nt; a++)
        for (size_t i = 0; i < t[a].n && !t[a].inactive; i++) {
            const ddp_opt *o = &t[a].opts[i];
            if (o->kind != DDP_OPT_HEADING && (!o->name || !o->name[0] || !size_fits(o)))
                return DDP_FAIL(DDP_ERR_INTERNAL, "option table: entry %zu ('%s') is malformed", i,
                                o->name ? o->name : "");
            if (!o->name) continue;
            if (o->kind == DDP_OPT_CUSTOM && !o->format)
                return DDP_FAIL(DDP_ERR_INTERNAL, "option table: --%s has no format", o->name);
            /* Names are unique over all the active tables parsed together. */
            for (int b = a; b < nt; b++) {
                if (t[b].inactive) continue;
                const ddp_opt *dup = ddp_opt_find(t[b].opts + (b == a ? i + 1 : 0),
                                                  t[b].n - (b == a ? i + 1 : 0), o->name);
                if (dup)
                    return DDP_FAIL(DDP_ERR_INTERNAL, "option table: --%s is declared twice",
                                    o->name);
            }
        }
    return DDP_OK;
}

/* ---- values ----------------------------------------------------------------------- */

static ddp_status bad(const char *opt, const char *arg, const char *want) {
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "--%s '%s': expected %s", opt, arg, want);
}

/* Decimal digits only: strtoull and strtod would also take leading blanks, signs, hex
 * and "inf", none of which a user means. */
static int is_plain_number(const char *s, int decimal) {
    if (!((*s >= '0' && *s <= '9') || (decimal && *s == '.'))) return 0;
    for (; *s; s++) {
        int ok = (*s >= '0' && *s <= '9') ||
                 (decimal && (*s == '.' || *s == 'e' || *s == 'E' ||
                              ((*s == '-' || *s == '+') && (s[-1] == 'e' || s[-1] == 'E'))));
        if (!ok) return 0;
    }
    return 1;
}

static ddp_status parse_u64(const char *opt, const char *arg, uint64_t lo, uint64_t hi,
                            uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = is_plain_number(arg, 0) ? strtoull(arg, &end, 10) : 0;
    if (!is_plain_number(arg, 0) || errno || *end || v < lo || v > hi) {
        char want[96];
        snprintf(want, sizeof want, "a whole number from %llu to %llu", (unsigned long long)lo,
                 (unsigned long long)hi);
        return bad(opt, arg, want);
    }
    *out = v;
    return DDP_OK;
}

static ddp_status parse_double(const char *opt, const char *arg, double lo, double hi,
                               const char *unit, double *out) {
    char *end = NULL;
    errno = 0;
    double v = is_plain_number(arg, 1) ? strtod(arg, &end) : NAN;
    if (!end || errno || *end || !isfinite(v) || v < lo || v > hi) {
        char want[96];
        snprintf(want, sizeof want, "a number%s from %g to %g", unit, lo, hi);
        return bad(opt, arg, want);
    }
    *out = v;
    return DDP_OK;
}

/* A size in bytes: a number, fractions allowed, then K, M or G (powers of 2) and an
 * optional B; the result must be a whole number of bytes. */
static ddp_status parse_bytes(const char *opt, const char *arg, uint64_t lo, uint64_t hi,
                              uint64_t *out) {
    char num[64];
    size_t n = strspn(arg, "0123456789.");
    double mul = 1.0, v = NAN;
    const char *p = arg + n;
    switch (*p) {
    case 'k':
    case 'K': mul = 1024.0, p++; break;
    case 'm':
    case 'M': mul = 1024.0 * 1024.0, p++; break;
    case 'g':
    case 'G': mul = 1024.0 * 1024.0 * 1024.0, p++; break;
    default: break;
    }
    if (*p == 'B' || *p == 'b') p++;
    if (n > 0 && n < sizeof num && *p == '\0') {
        memcpy(num, arg, n);
        num[n] = '\0';
        char *end = num;
        v = is_plain_number(num, 1) ? strtod(num, &end) * mul : NAN;
        if (isfinite(v) && *end) v = NAN;
    }
    if (!isfinite(v) || v != floor(v) || v < (double)lo || v > (double)hi) {
        char want[128], l[32], h[32];
        ddp_opt_format_bytes(lo, l, sizeof l);
        ddp_opt_format_bytes(hi, h, sizeof h);
        snprintf(want, sizeof want, "a whole number of bytes from %s to %s, like 4096, 64K or 1.5M",
                 l, h);
        return bad(opt, arg, want);
    }
    *out = (uint64_t)v;
    return DDP_OK;
}

static ddp_status parse_choice(const ddp_opt *o, const char *arg, int *out) {
    int i = 0;
    for (; o->choices[i]; i++)
        if (strcmp(arg, o->choices[i]) == 0) {
            *out = o->values ? o->values[i] : i;
            return DDP_OK;
        }
    char want[160] = "one of";
    for (i = 0; o->choices[i]; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s %s", i ? "," : "",
                 o->choices[i]);
    return bad(o->name, arg, want);
}

/* Parses arg and writes the field only when it is valid; without `ranged`, any number of
 * the field's type is valid (a default, which may be outside what a user may give). */
static ddp_status apply(const ddp_opt *o, const char *arg, char *field, int ranged) {
    uint64_t u = 0, lo = ranged ? o->lo : 0, hi = ranged ? o->hi : UINT64_MAX;
    double d = 0.0, min = ranged ? o->min : -HUGE_VAL, max = ranged ? o->max : HUGE_VAL;
    int i = 0;
    switch (o->kind) {
    case DDP_OPT_HEADING: break;
    case DDP_OPT_FLAG:
        i = (int)o->lo;
        memcpy(field, &i, sizeof i);
        return DDP_OK;
    case DDP_OPT_INT:
        DDP_CHECK(parse_u64(o->name, arg, lo, ranged ? hi : INT32_MAX, &u));
        i = (int)u;
        memcpy(field, &i, sizeof i);
        return DDP_OK;
    case DDP_OPT_U64:
        DDP_CHECK(parse_u64(o->name, arg, lo, hi, &u));
        memcpy(field, &u, sizeof u);
        return DDP_OK;
    case DDP_OPT_FLOAT: {
        DDP_CHECK(parse_double(o->name, arg, min, max, "", &d));
        float f = (float)d;
        memcpy(field, &f, sizeof f);
        return DDP_OK;
    }
    case DDP_OPT_MB: {
        DDP_CHECK(parse_double(o->name, arg, min, max, " of MiB", &d));
        size_t bytes = (size_t)(d * 1048576.0);
        if (bytes < sizeof(float)) bytes = sizeof(float);
        memcpy(field, &bytes, sizeof bytes);
        return DDP_OK;
    }
    case DDP_OPT_BYTES: {
        DDP_CHECK(parse_bytes(o->name, arg, lo, hi, &u));
        size_t bytes = (size_t)u;
        memcpy(field, &bytes, sizeof bytes);
        return DDP_OK;
    }
    case DDP_OPT_CHOICE:
        DDP_CHECK(parse_choice(o, arg, &i));
        memcpy(field, &i, sizeof i);
        return DDP_OK;
    case DDP_OPT_PATH: {
        size_t n = strlen(arg);
        if ((ranged && n == 0) || n >= o->size) {
            char want[96];
            snprintf(want, sizeof want, "a non-empty path shorter than %zu bytes", o->size);
            return bad(o->name, arg, want);
        }
        memcpy(field, arg, n + 1);
        return DDP_OK;
    }
    case DDP_OPT_CUSTOM: DDP_CHECK(o->parse(o->name, arg, field)); return DDP_OK;
    }
    return DDP_FAIL(DDP_ERR_INTERNAL, "--%s: option kind %d not handled", o->name, (int)o->kind);
}

/* ---- argv ------------------------------------------------------------------------- */

/* The option named by name[0..len) in an active table (inactive 0) or in an inactive one,
 * and its table. */
static const ddp_opt *lookup(const ddp_opt_table *t, int nt, const char *name, size_t len,
                             int inactive, const ddp_opt_table **table) {
    for (int a = 0; a < nt; a++)
        for (size_t i = 0; i < t[a].n && !t[a].inactive == !inactive; i++) {
            const ddp_opt *o = &t[a].opts[i];
            if (o->name && strlen(o->name) == len && strncmp(o->name, name, len) == 0) {
                *table = &t[a];
                return o;
            }
        }
    return NULL;
}

/* Names are never abbreviated (an abbreviation that is unique today becomes ambiguous
 * when an option is added), but an unknown name that starts some known ones is most
 * likely meant as one of them: say which. */
static ddp_status unknown(const ddp_opt_table *t, int nt, const char *arg, size_t len) {
    char hint[256] = "";
    int found = 0;
    for (int a = 0; a < nt && len > 2; a++)
        for (size_t i = 0; i < t[a].n && found < 4 && !t[a].inactive; i++) {
            const char *name = t[a].opts[i].name;
            if (!name || strncmp(name, arg + 2, len - 2) != 0) continue;
            size_t used = strlen(hint);
            snprintf(hint + used, sizeof hint - used, "%s--%s", found ? " or " : ": did you mean ",
                     name);
            found++;
        }
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "unknown option '%.*s'%s%s (see --help)", (int)len, arg,
                    hint, found ? "?" : "");
}

/* An option of inactive tables only: names whom it belongs to. */
static ddp_status inactive(const ddp_opt_table *t, int nt, const char *arg, size_t len) {
    char who[512] = "";
    for (int a = 0; a < nt; a++) {
        if (!t[a].inactive) continue;
        for (size_t i = 0; i < t[a].n; i++) {
            const char *name = t[a].opts[i].name;
            if (!name || strlen(name) != len - 2 || strncmp(name, arg + 2, len - 2) != 0) continue;
            size_t used = strlen(who);
            snprintf(who + used, sizeof who - used, "%s%s", used ? ", " : "", t[a].inactive);
            break;
        }
    }
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "option '%.*s' applies to %s only", (int)len, arg, who);
}

ddp_status ddp_opt_parse(int argc, char **argv, const ddp_opt_table *t, int nt) {
    DDP_CHECK(check_tables(t, nt));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            if (i + 1 < argc)
                return DDP_FAIL(DDP_ERR_INVALID_ARG, "unexpected argument '%s' after --",
                                argv[i + 1]);
            break;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (a[0] == '-')
                return DDP_FAIL(DDP_ERR_INVALID_ARG, "unknown option '%s' (see --help)", a);
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "unexpected argument '%s' (options start with --)",
                            a);
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const ddp_opt_table *table = NULL;
        const ddp_opt *o = lookup(t, nt, a + 2, len - 2, 0, &table);
        if (!o && lookup(t, nt, a + 2, len - 2, 1, &table)) return inactive(t, nt, a, len);
        if (!o) return unknown(t, nt, a, len);
        const char *value = eq ? eq + 1 : NULL;
        if (o->kind == DDP_OPT_FLAG && value)
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "option '--%s' takes no value, not '%s'", o->name,
                            value);
        if (o->kind != DDP_OPT_FLAG && !value) {
            if (i + 1 >= argc)
                return DDP_FAIL(DDP_ERR_INVALID_ARG, "option '--%s' needs a value (see --help)",
                                o->name);
            value = argv[++i];
        }
        DDP_CHECK(apply(o, value, (char *)table->base + o->offset, 1));
    }
    return DDP_OK;
}

/* ---- defaults --------------------------------------------------------------------- */

const char *ddp_opt_default(const ddp_opt *o, int variant) {
    if (o->by_model && variant >= 0 && variant < DDP_OPT_VARIANTS && o->by_model[variant])
        return o->by_model[variant];
    return o->def;
}

ddp_status ddp_opt_set_defaults(const ddp_opt_table *t, int nt, int variant) {
    DDP_CHECK(check_tables(t, nt));
    for (int a = 0; a < nt; a++)
        for (size_t i = 0; i < t[a].n && !t[a].inactive; i++) {
            const ddp_opt *o = &t[a].opts[i];
            if (o->kind == DDP_OPT_HEADING) continue;
            char *field = (char *)t[a].base + o->offset;
            const char *def = ddp_opt_default(o, variant);
            if (!def || !*def) {
                memset(field, 0, o->size);
                continue;
            }
            int flag = 0;
            ddp_status s = DDP_OK;
            if (o->kind == DDP_OPT_FLAG) {
                /* "1": as if given (its field holds .lo); "0": not (the other value). */
                if (strcmp(def, "0") == 0 || strcmp(def, "1") == 0)
                    flag = def[0] == '1' ? (int)o->lo : o->lo == 0;
                else
                    s = DDP_ERR_INVALID_ARG;
                if (s == DDP_OK) memcpy(field, &flag, sizeof flag);
            } else {
                s = apply(o, def, field, 0);
            }
            if (s != DDP_OK)
                return DDP_FAIL(DDP_ERR_INTERNAL,
                                "option table: the default '%s' of --%s does not "
                                "parse (%s)",
                                def, o->name, ddp_error_message());
        }
    return DDP_OK;
}

/* ---- --help ----------------------------------------------------------------------- */

/* What --help says of o's default for `variant`: "(default X)", what a zero default means,
 * or nothing (flags, an empty path, a zero that means nothing to say). */
static void default_note(const ddp_opt *o, int variant, char *buf, size_t cap) {
    const char *def = ddp_opt_default(o, variant);
    buf[0] = '\0';
    if (o->kind == DDP_OPT_FLAG) return;
    if (!def || !*def) {
        if (o->zero) snprintf(buf, cap, "(default: %s)", o->zero);
        return;
    }
    snprintf(buf, cap, "(default %s)", def);
}

/* Writes text with its continuation lines indented to the help column; returns the length
 * of its last line. */
static size_t put_indented(FILE *f, const char *text) {
    size_t line = 0;
    for (const char *p = text; *p; p++) {
        fputc(*p, f);
        line++;
        if (*p == '\n') {
            fprintf(f, "%*s", HELP_COLUMN, "");
            line = 0;
        }
    }
    return line;
}

void ddp_opt_print_help(FILE *f, const char *intro, const ddp_opt_table *t, int nt, int variant) {
    fputs(intro, f);
    for (int a = 0; a < nt; a++)
        for (size_t i = 0; i < t[a].n && !t[a].inactive; i++) {
            const ddp_opt *o = &t[a].opts[i];
            if (o->kind == DDP_OPT_HEADING) {
                fprintf(f, "%s\n", o->help);
                continue;
            }
            char left[128];
            int n = snprintf(left, sizeof left, "  --%s", o->name);
            if (o->kind != DDP_OPT_FLAG && o->arg)
                n += snprintf(left + n, sizeof left - (size_t)n, " %s", o->arg);
            else if (o->kind == DDP_OPT_CHOICE)
                for (int c = 0; o->choices[c] && n < (int)sizeof left; c++)
                    n += snprintf(left + n, sizeof left - (size_t)n, "%c%s", c ? '|' : ' ',
                                  o->choices[c]);
            /* A long left side gets its own line; the help starts below it. */
            if (n >= HELP_COLUMN - 1)
                fprintf(f, "%s\n%*s", left, HELP_COLUMN, "");
            else
                fprintf(f, "%-*s", HELP_COLUMN, left);
            size_t line = put_indented(f, o->help);
            /* The default ends the last line, or starts a line of its own where its first
             * line would pass 80 columns. */
            char note[256];
            default_note(o, variant, note, sizeof note);
            size_t first = strcspn(note, "\n");
            if (note[0] && line > 0 && HELP_COLUMN + line + 1 + first > 80)
                fprintf(f, "\n%*s", HELP_COLUMN, "");
            else if (note[0] && line > 0)
                fputc(' ', f);
            put_indented(f, note);
            fputc('\n', f);
        }
    fputs("\nOptions are spelled in full, as --name VALUE or --name=VALUE. DDP_DEBUG=1 in the\n"
          "environment shows errors with their trace, as --verbose does.\n",
          f);
}

/* ---- the canonical text ----------------------------------------------------------- */

void ddp_opt_format_value(const ddp_opt *o, const void *value, char *buf, size_t cap) {
    const char *field = value;
    int i = 0;
    uint64_t u = 0;
    float f = 0.0f;
    size_t z = 0;
    if (cap == 0) return;
    if (o->format) {
        o->format(field, buf, cap);
        return;
    }
    switch (o->kind) {
    case DDP_OPT_FLAG:
        /* Given or not, as the flag reads ("no-shuffle=1" when shuffling is off). */
        memcpy(&i, field, sizeof i);
        snprintf(buf, cap, "%d", (uint64_t)i == o->lo);
        return;
    case DDP_OPT_INT:
        memcpy(&i, field, sizeof i);
        snprintf(buf, cap, "%d", i);
        return;
    case DDP_OPT_CHOICE:
        memcpy(&i, field, sizeof i);
        for (int c = 0; o->choices[c]; c++)
            if ((o->values ? o->values[c] : c) == i) {
                snprintf(buf, cap, "%s", o->choices[c]);
                return;
            }
        snprintf(buf, cap, "%d", i);
        return;
    case DDP_OPT_U64:
        memcpy(&u, field, sizeof u);
        snprintf(buf, cap, "%llu", (unsigned long long)u);
        return;
    case DDP_OPT_FLOAT:
        memcpy(&f, field, sizeof f);
        snprintf(buf, cap, "%.9g", (double)f);
        return;
    case DDP_OPT_MB:
    case DDP_OPT_BYTES:
        memcpy(&z, field, sizeof z);
        snprintf(buf, cap, "%zu", z);
        return;
    case DDP_OPT_PATH: snprintf(buf, cap, "%.*s", (int)o->size, field); return;
    case DDP_OPT_HEADING:
    case DDP_OPT_CUSTOM: break;
    }
    buf[0] = '\0';
}

size_t ddp_opt_canonical(const ddp_opt_table *t, int nt, int resume, char *buf, size_t cap) {
    if (cap == 0) return 0;
    size_t len = 0;
    buf[0] = '\0';
    for (int a = 0; a < nt; a++)
        for (size_t i = 0; i < t[a].n && len + 1 < cap && !t[a].inactive; i++) {
            const ddp_opt *o = &t[a].opts[i];
            if (o->kind == DDP_OPT_HEADING || o->per_rank || (resume && o->resumable)) continue;
            char value[4096 + 1];
            ddp_opt_format_value(o, (const char *)t[a].base + o->offset, value, sizeof value);
            int n = snprintf(buf + len, cap - len, "%s%s=%s", len ? " " : "", o->name, value);
            if (n < 0) break;
            len += (size_t)n < cap - len ? (size_t)n : cap - len - 1;
        }
    return len;
}
