/* The offline LLM provider: no network, for demos and tests.
 *
 * Posts come from a small weighted template grammar over a compiled-in
 * topic corpus (features, use cases, tutorials, community, problem/solution),
 * seeded per request, so iterations differ. The instruction part of the
 * prompt (its first paragraph, plus the system prompt) picks the intent:
 * scoring (### POST blocks), JSON, critique, rewrite or a fresh post.
 * Scores come from measurable text heuristics, deterministic per text. */
#include "btl/err.h"
#include "btl/llm.h"
#include "btl/util.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_POSTS 200
#define HEAD_MAX 2000
#define WORDSET 2048 /* distinct words tracked per text */

/* ------------------------------------------------------------------- rng */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static size_t rng_pick(rng *r, size_t n)
{
    return n ? (size_t)(rng_next(r) % n) : 0;
}

/* ---------------------------------------------------------------- corpus */

/* A topic: "key=value" bindings the templates refer to as {key}. */
typedef const char *const topic_t[8];

static topic_t features[] = {
    {"name=time-zone aware cron",
     "what=runs every task on a 5-field cron expression evaluated in any IANA time zone",
     "why=your 9 o'clock post stays at 9 o'clock when the clocks change",
     "detail=`L` for the last day of the month and `MON#2` for the second Monday work too",
     "cmd=btl schedule next \"0 9 * * MON-FRI\" --tz Europe/Berlin -n 5", NULL},
    {"name=the crash-safe job queue",
     "what=keeps every job in PostgreSQL and hands it out with a lease",
     "why=a worker that dies mid-job loses nothing: the lease runs out and the job is rescued",
     "detail=failed jobs back off for attempt^4 seconds with a little jitter", "cmd=btl status",
     NULL},
    {"name=per-task circuit breakers", "what=pauses a task after too many failures in a row",
     "why=a broken API key does not burn through your quota in the middle of the night",
     "detail=after the reset period one trial run decides whether the task comes back",
     "cmd=btl resume generation", NULL},
    {"name=posting windows",
     "what=moves each post to the next opening of a window such as 09:00-21:00 Europe/Berlin",
     "why=your community never gets a post while it sleeps",
     "detail=windows may cross midnight, and jitter keeps the timing human",
     "cmd=btl schedule next \"every 2h\" -n 3", NULL},
    {"name=multi-act narratives",
     "what=chains prompts such as generate, critique, refine and format into one narrative",
     "why=the second draft is nearly always better than the first",
     "detail=each act can use a different model, temperature and token limit",
     "cmd=btl validate config/botticelli.yaml", NULL},
    {"name=automatic curation",
     "what=scores every candidate for engagement, clarity, value, tone and polish",
     "why=only the best few drafts of a run ever reach your channel",
     "detail=a minimum score, banned phrases and a near-duplicate check guard the gate",
     "cmd=btl posts --status pending", NULL},
    {"name=at-most-once posting",
     "what=publishes each approved post with an idempotency key and records the remote id",
     "why=a retry after a network blip never shows the same post twice",
     "detail=a post whose outcome is unknown waits for a human instead of a blind re-post",
     "cmd=btl posts --status unknown", NULL},
    {"name=built-in metrics", "what=exposes Prometheus metrics on every service",
     "why=you can graph queue depth, failures and LLM token use next to everything else",
     "detail=health probes for liveness, readiness and startup come for free",
     "cmd=curl -s 127.0.0.1:8080/metrics", NULL},
    {"name=shared LLM budgets",
     "what=shares requests-per-minute and tokens-per-day budgets across every replica",
     "why=three generator replicas never blow through a free tier together",
     "detail=a safety multiplier keeps you below the provider's own limits", "cmd=btl status",
     NULL},
    {"name=narrative state", "what=keeps small facts between runs in a key-value store with expiry",
     "why=the bot remembers recent topics and stops repeating itself",
     "detail=keys are hierarchical, like `carousel.last_post`", "cmd=btl state list carousel",
     NULL},
    {"name=local model support",
     "what=talks to any OpenAI-compatible server, including Ollama and llama.cpp",
     "why=your drafts never leave your machine unless you want them to",
     "detail=Gemini and hosted OpenAI work with the same configuration block",
     "cmd=LLM_KIND=openai make run", NULL},
};

static topic_t usecases[] = {
    {"name=a weekly changelog digest", "who=an open-source maintainer",
     "scenario=turns merged pull requests into a friendly Friday summary",
     "outcome=contributors finally see their work celebrated", NULL},
    {"name=daily homelab tips", "who=a homelab Discord with 4,000 members",
     "scenario=posts one practical tip every weekday morning",
     "outcome=the channel stays lively without a moderator writing every post", NULL},
    {"name=a game studio devlog", "who=a three-person game studio",
     "scenario=drafts short devlog updates from the week's notes",
     "outcome=players get news every Tuesday and the team keeps coding", NULL},
    {"name=study group quizzes", "who=a language study group",
     "scenario=sends a small vocabulary quiz twice a day inside a posting window",
     "outcome=members practise a little every day instead of cramming", NULL},
    {"name=meetup reminders", "who=a local developer meetup",
     "scenario=announces talks a week ahead and again on the day",
     "outcome=attendance went up because nobody forgets the date any more", NULL},
    {"name=release notes on Mastodon", "who=a small SaaS team",
     "scenario=shares each release on Mastodon and Discord with one approval step",
     "outcome=announcements go out within minutes of a release, reviewed by a human", NULL},
    {"name=a support FAQ of the week", "who=a customer support team",
     "scenario=turns the most asked question of the week into a short explainer",
     "outcome=repeat tickets dropped noticeably within a month", NULL},
    {"name=book club prompts", "who=an online book club",
     "scenario=posts a discussion question for each chapter on a fixed schedule",
     "outcome=threads fill up even in weeks when the organisers are busy", NULL},
};

static topic_t tutorials[] = {
    {"name=your first scheduled post in five minutes",
     "s1=run `make run` to start PostgreSQL and all four services",
     "s2=open `config/botticelli.yaml` and set the schedule of the `generation` task",
     "s3=fire it right now with `btl trigger generation`",
     "s4=watch the candidates arrive with `btl posts --status pending`", NULL},
    {"name=switching to a local model",
     "s1=start Ollama and pull a model with `ollama pull llama3.2`",
     "s2=set `LLM_KIND=openai` and `LLM_BASE_URL=http://127.0.0.1:11434/v1`",
     "s3=restart the generator so it picks up the new provider",
     "s4=check `btl_llm_requests_total` on the metrics page", NULL},
    {"name=approving posts by hand", "s1=set `mode: manual` under the curation task",
     "s2=list the scored candidates with `btl posts --status pending`",
     "s3=approve the one you like with `btl approve 42`",
     "s4=let the poster publish it inside the next posting window", NULL},
    {"name=checking a cron expression before you deploy",
     "s1=write the expression you have in mind, for example `30 8 * * MON-FRI`",
     "s2=run `btl schedule next \"30 8 * * MON-FRI\" --tz America/New_York -n 5`",
     "s3=compare the five timestamps with what you expect around the DST change",
     "s4=paste the expression into the task's `schedule` key", NULL},
    {"name=recovering from an open circuit",
     "s1=run `btl status` and read the task's paused reason",
     "s2=fix the cause, for example an expired API key",
     "s3=run `btl resume generation` to close the circuit",
     "s4=follow the next run with `btl history generation`", NULL},
    {"name=remembering facts between runs",
     "s1=store a value with `btl state set topics.last '\"cron\"'`",
     "s2=reference it in a prompt as a state key of your narrative",
     "s3=let an act update it through its output variable",
     "s4=clean up old keys with `btl state clear topics`", NULL},
};

static topic_t community[] = {
    {"name=the narrative showcase", "event=a showcase thread for your favourite narratives",
     "invite=post the prompt chain you are proudest of and what it produces", NULL},
    {"name=good first issues", "event=a fresh batch of issues labelled good-first-issue",
     "invite=pick one, say hi in the thread, and we will pair with you on the review", NULL},
    {"name=office hours", "event=open office hours every second Thursday",
     "invite=bring your config, your questions or just your curiosity", NULL},
    {"name=a thank-you to our testers",
     "event=a big thank-you to everyone who tested the release candidate",
     "invite=tell us what broke, what surprised you and what you want next", NULL},
    {"name=the curation survey", "event=a five-question survey about how you curate posts",
     "invite=your answers decide which scoring criteria we tune first", NULL},
    {"name=the community call recap", "event=a recap of this month's community call",
     "invite=catch up on the notes and add your questions for the next call", NULL},
};

static topic_t problems[] = {
    {"name=duplicate posts", "problem=a post went out twice after a network blip",
     "cause=the first request succeeded but the reply never arrived",
     "fix=an idempotency key per post plus an `unknown` state that waits for a human", NULL},
    {"name=daylight saving surprises",
     "problem=the bot posted at 3 in the morning after the clocks changed",
     "cause=the schedule was computed in UTC while the audience lives in Europe",
     "fix=cron expressions evaluated in the task's IANA time zone, plus a posting window", NULL},
    {"name=an empty free tier", "problem=the LLM free tier ran dry by noon",
     "cause=three replicas each thought they had the whole budget",
     "fix=per-minute and per-day budgets shared in PostgreSQL by every replica", NULL},
    {"name=tasks failing all night", "problem=a revoked API key failed every run until morning",
     "cause=retries kept hammering a request that could never succeed",
     "fix=an immediate pause on unrecoverable errors, backed by the circuit breaker", NULL},
    {"name=a stuck queue", "problem=jobs piled up after a worker crashed",
     "cause=the crashed worker still looked busy",
     "fix=leases that expire, and a scheduler that rescues their jobs", NULL},
    {"name=samey posts", "problem=every generated post started the same way",
     "cause=the prompt had no memory of earlier runs",
     "fix=a carousel of five angles and narrative state that remembers recent topics", NULL},
    {"name=weak drafts slipping through", "problem=a clumsy draft reached the channel",
     "cause=nothing stood between the generator and the poster",
     "fix=a curator that scores every draft and approves only the best above a minimum", NULL},
};

/* ---------------------------------------------------------------- grammar */

/* Symbols with alternatives; an optional "N|" prefix weights one. */
struct symbol {
    const char *name;
    const char *const *alts;
};

#define ALTS(...) ((const char *const[]){__VA_ARGS__, NULL})

static const struct symbol grammar[] = {
    {"emoji",
     ALTS("\xE2\x9C\xA8", "\xF0\x9F\x9A\x80", "\xF0\x9F\x92\xA1", "\xF0\x9F\x9B\xA0\xEF\xB8\x8F",
          "\xF0\x9F\x8E\xAF", "\xF0\x9F\x93\x85", "\xF0\x9F\xA7\xA9", "\xE2\x9C\x85")},
    {"product", ALTS("Botticelli")},
    {"self", ALTS("your self-hosted setup", "your server", "your homelab", "your own hardware")},
    {"cta", ALTS("Give it a try and tell us how it goes in the comments.",
                 "Try it on your own server and share what you build.",
                 "What would you schedule first? Reply below.",
                 "Questions? Drop them in this channel and we will help.",
                 "2|Check out the docs, then let us know what you think.",
                 "Got a setup like this? Share it with the community.")},
    {"f_title",
     ALTS("**Feature spotlight: {name}** {emoji}", "**Did you know? {product} has {name}** {emoji}",
          "**{emoji} {name}, explained**", "## {name} in {product}")},
    {"f_open", ALTS("{product} {what}.", "Meet {name}: {product} {what}.",
                    "Here is a feature that quietly saves your weekend: {product} {what}.",
                    "If you run {product} on {self}, this one is for you. It {what}.")},
    {"f_body",
     ALTS("Why it matters: {why}. Bonus: {detail}.",
          "The payoff is simple: {why}.\n\n- {detail}\n- It works the same on one replica or ten",
          "Why care? {why}. And {detail}.\n\nTry it: `{cmd}`",
          "In practice {why}. A small extra: {detail}.")},
    {"u_title", ALTS("**Use case: {name}** {emoji}", "**How {who} uses {product}** {emoji}",
                     "**{emoji} Real-world setup: {name}**")},
    {"u_open",
     ALTS("Picture {who}. With {product}, the bot {scenario}.",
          "Here is a setup we love: {who} {scenario} with {product}.",
          "One of our favourite stories: {who} runs {product} on {self}. It {scenario}.")},
    {"u_body",
     ALTS("The result? {outcome}.", "What changed: {outcome}.",
          "- Schedule: a cron line and a time zone\n- Review: curation picks the best drafts\n\n"
          "The result: {outcome}.")},
    {"t_title",
     ALTS("**Tutorial: {name}** {emoji}", "**{emoji} Quick guide: {name}**", "## How to: {name}")},
    {"t_open",
     ALTS("Four steps, no magic:", "Here is the short version:", "You can do this over a coffee:")},
    {"t_close", ALTS("That's it. {cta}", "Done! {cta}", "{cta}")},
    {"c_title", ALTS("**Community: {name}** {emoji}", "**{emoji} From the community**",
                     "**Calling all {product} users** {emoji}")},
    {"c_open", ALTS("This week we are starting {event}.", "Big news for the community: {event}.",
                    "Mark your calendar: {event}.")},
    {"c_body", ALTS("We would love your help: {invite}.", "How to join in: {invite}.",
                    "Everyone is welcome: {invite}.")},
    {"p_title", ALTS("**Problem solved: {name}** {emoji}", "**{emoji} A fix for {name}**",
                     "**Lessons learned: {name}**")},
    {"p_open", ALTS("The problem: {problem}.", "It happens to the best of us: {problem}.",
                    "Ever had this? {problem}.")},
    {"p_body", ALTS("The cause: {cause}. The fix in {product}: {fix}.",
                    "Why it happened: {cause}.\n\n**The fix:** {fix}.",
                    "Root cause: {cause}. {product} answers with {fix}.")},
};

static const char *symbol_alt(const struct symbol *s, rng *r)
{
    size_t total = 0, n = 0;
    for (; s->alts[n]; n++) {
        const char *a = s->alts[n];
        total += (isdigit((unsigned char)a[0]) && a[1] == '|') ? (size_t)(a[0] - '0') : 1;
    }
    size_t x = rng_pick(r, total);
    for (size_t i = 0; i < n; i++) {
        const char *a = s->alts[i];
        bool weighted = isdigit((unsigned char)a[0]) && a[1] == '|';
        size_t w = weighted ? (size_t)(a[0] - '0') : 1;
        if (x < w)
            return weighted ? a + 2 : a;
        x -= w;
    }
    return s->alts[0];
}

static const char *topic_get(const char *const *topic, const char *key, size_t klen)
{
    for (size_t i = 0; topic && topic[i]; i++)
        if (strncmp(topic[i], key, klen) == 0 && topic[i][klen] == '=')
            return topic[i] + klen + 1;
    return NULL;
}

/* Expand {name} references: topic bindings first (verbatim), then grammar
 * symbols (recursively, depth-limited). */
static int expand(btl_buf *out, const char *tpl, const char *const *topic, rng *r, int depth)
{
    int rc = 0;
    for (const char *p = tpl; *p && rc == 0; p++) {
        const char *close;
        if (*p != '{' || (close = strchr(p + 1, '}')) == NULL || close - p > 32) {
            rc = btl_buf_append(out, p, 1);
            continue;
        }
        size_t kl = (size_t)(close - p - 1);
        const char *v = topic_get(topic, p + 1, kl);
        if (v) {
            rc = btl_buf_puts(out, v);
        } else {
            const struct symbol *sym = NULL;
            for (size_t i = 0; i < BTL_ARRAY_LEN(grammar); i++)
                if (strlen(grammar[i].name) == kl && strncmp(grammar[i].name, p + 1, kl) == 0)
                    sym = &grammar[i];
            if (sym && depth < 8)
                rc = expand(out, symbol_alt(sym, r), topic, r, depth + 1);
            else
                rc = btl_buf_append(out, p, kl + 2);
        }
        p = close;
    }
    return rc;
}

/* --------------------------------------------------------- text helpers */

static bool icontains(const char *hay, const char *needle)
{
    return hay && strcasestr(hay, needle) != NULL;
}

static const char *const angles[] = {"feature", "usecase", "tutorial", "community",
                                     "problem_solution"};

/* Normalize an angle word; NULL if unknown. */
static const char *angle_norm(const char *w, size_t n)
{
    char low[32];
    if (n == 0 || n >= sizeof low)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++)
        if (w[i] != '_' && w[i] != '-' && w[i] != ' ')
            low[j++] = (char)tolower((unsigned char)w[i]);
    low[j] = '\0';
    if (strncmp(low, "feature", 7) == 0)
        return "feature";
    if (strncmp(low, "usecase", 7) == 0)
        return "usecase";
    if (strncmp(low, "tutorial", 8) == 0 || strncmp(low, "howto", 5) == 0)
        return "tutorial";
    if (strncmp(low, "community", 9) == 0)
        return "community";
    if (strncmp(low, "problem", 7) == 0)
        return "problem_solution";
    return NULL;
}

/* "Angle: X" or "angle": "X" anywhere in the prompt. */
static const char *detect_angle(const char *prompt)
{
    for (const char *p = prompt; (p = strcasestr(p, "angle")) != NULL; p += 5) {
        const char *q = p + 5;
        if (*q == '"')
            q++;
        while (*q == ' ')
            q++;
        if (*q != ':')
            continue;
        q++;
        while (*q == ' ' || *q == '"')
            q++;
        size_t n = strspn(q, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_- ");
        while (n > 0 && q[n - 1] == ' ')
            n--;
        const char *a = angle_norm(q, n);
        if (a)
            return a;
    }
    return NULL;
}

/* The instruction part of a prompt: its first paragraph. */
static void prompt_head(const char *prompt, char *head, size_t n)
{
    const char *e = strstr(prompt, "\n\n");
    size_t l = e ? (size_t)(e - prompt) : strlen(prompt);
    if (l >= n)
        l = n - 1;
    memcpy(head, prompt, l);
    head[l] = '\0';
}

static char *trim_dup(const char *s, size_t n)
{
    while (n > 0 && isspace((unsigned char)*s))
        s++, n--;
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    return strndup(s, n);
}

/* The draft a critique/rewrite/format prompt talks about: after "Draft:"
 * up to a "Fixes:"-like section, else everything after the first
 * paragraph. NULL if there is none. */
static char *find_draft(const char *prompt)
{
    const char *d = strstr(prompt, "Draft:");
    if (d) {
        d += 6;
        const char *end = NULL;
        static const char *const markers[] = {"\nFixes:", "\nFeedback:", "\nCritique:", "\nNotes:"};
        for (size_t i = 0; i < BTL_ARRAY_LEN(markers); i++) {
            const char *m = strstr(d, markers[i]);
            if (m && (end == NULL || m < end))
                end = m;
        }
        size_t n = end ? (size_t)(end - d) : strlen(d);
        char *s = trim_dup(d, n);
        if (s && s[0])
            return s;
        free(s);
        return NULL;
    }
    const char *e = strstr(prompt, "\n\n");
    if (e == NULL)
        return NULL;
    char *s = trim_dup(e, strlen(e));
    if (s && s[0])
        return s;
    free(s);
    return NULL;
}

/* Cut text to at most max bytes at a paragraph, line or sentence boundary
 * (never inside a UTF-8 sequence). */
static void cut_text(char *t, size_t max)
{
    size_t n = strlen(t);
    if (n <= max)
        return;
    size_t cut = max;
    while (cut > 0 && ((unsigned char)t[cut] & 0xC0) == 0x80)
        cut--;
    size_t best = 0;
    for (size_t i = max / 2; i < cut; i++)
        if (t[i] == '\n' || ((t[i] == '.' || t[i] == '!' || t[i] == '?') && t[i + 1] == ' '))
            best = t[i] == '\n' ? i : i + 1;
    t[best ? best : cut] = '\0';
    n = strlen(t);
    while (n > 0 && isspace((unsigned char)t[n - 1]))
        t[--n] = '\0';
}

/* First sentence (or line) of text, without markdown bold markers. */
static char *first_sentence(const char *text)
{
    const char *p = text;
    while (*p && (isspace((unsigned char)*p) || *p == '#' || *p == '*'))
        p++;
    /* A bold title line counts as the hook. */
    size_t n = strcspn(p, "\n");
    for (size_t i = 0; i < n; i++) {
        if ((p[i] == '.' || p[i] == '!' || p[i] == '?') && (i + 1 == n || p[i + 1] == ' ')) {
            n = i + 1;
            break;
        }
    }
    btl_buf b;
    btl_buf_init(&b, 4096);
    for (size_t i = 0; i < n && i < 400; i++)
        if (p[i] != '*')
            btl_buf_append(&b, p + i, 1);
    char *s = trim_dup(b.data ? b.data : "", b.len);
    btl_buf_free(&b);
    return s;
}

/* ------------------------------------------------------------ generation */

struct angle_spec {
    const char *angle;
    topic_t *topics;
    size_t n;
};

static const struct angle_spec angle_specs[] = {
    {"feature", features, BTL_ARRAY_LEN(features)},
    {"usecase", usecases, BTL_ARRAY_LEN(usecases)},
    {"tutorial", tutorials, BTL_ARRAY_LEN(tutorials)},
    {"community", community, BTL_ARRAY_LEN(community)},
    {"problem_solution", problems, BTL_ARRAY_LEN(problems)},
};

/* A fresh post for angle (NULL = any), avoiding topics the prompt names
 * (e.g. "Recent topics to avoid: ..."). */
static int generate_post(const char *angle, const char *avoid, rng *r, char **out)
{
    const struct angle_spec *as = NULL;
    for (size_t i = 0; angle && i < BTL_ARRAY_LEN(angle_specs); i++)
        if (strcmp(angle_specs[i].angle, angle) == 0)
            as = &angle_specs[i];
    if (as == NULL)
        as = &angle_specs[rng_pick(r, BTL_ARRAY_LEN(angle_specs))];
    const char *const *topic = as->topics[rng_pick(r, as->n)];
    for (int tries = 0; tries < 4 && avoid && icontains(avoid, topic_get(topic, "name", 4));
         tries++)
        topic = as->topics[rng_pick(r, as->n)];

    const char *tpl;
    switch (as->angle[0]) {
    case 'f':
        tpl = "{f_title}\n\n{f_open} {f_body}\n\n{cta}";
        break;
    case 'u':
        tpl = "{u_title}\n\n{u_open}\n\n{u_body}\n\n{cta}";
        break;
    case 't':
        tpl = "{t_title}\n\n{t_open}\n1. {s1}\n2. {s2}\n3. {s3}\n4. {s4}\n\n{t_close}";
        break;
    case 'c':
        tpl = "{c_title}\n\n{c_open} {c_body}\n\n{cta}";
        break;
    default:
        tpl = "{p_title}\n\n{p_open} {p_body}\n\n{cta}";
    }
    btl_buf b;
    btl_buf_init(&b, 16384);
    int rc = expand(&b, tpl, topic, r, 0);
    if (rc != 0) {
        btl_buf_free(&b);
        return rc;
    }
    /* Sentences start upper-case even when a binding starts lower-case. */
    for (size_t i = 0; i + 2 < b.len; i++)
        if ((b.data[i] == '.' || b.data[i] == '?') && b.data[i + 1] == ' ' &&
            islower((unsigned char)b.data[i + 2]))
            b.data[i + 2] = (char)toupper((unsigned char)b.data[i + 2]);
    for (size_t i = 0; i + 1 < b.len; i++) {
        size_t j = i;
        if (i == 0 || b.data[i - 1] == '\n') {
            if (b.data[j] == '-' && b.data[j + 1] == ' ')
                j += 2; /* bullet items too */
            if (islower((unsigned char)b.data[j]))
                b.data[j] = (char)toupper((unsigned char)b.data[j]);
        }
    }
    char *s = btl_buf_steal(&b);
    btl_buf_free(&b);
    if (s == NULL)
        return BTL_ENOMEM;
    cut_text(s, BTL_LLM_OFFLINE_MAX_CHARS);
    *out = s;
    return 0;
}

/* --------------------------------------------------------------- scoring */

const char *const btl__llm_criteria[BTL_LLM_N_CRITERIA] = {"engagement", "clarity", "value", "tone",
                                                           "polish"};

struct stats {
    size_t chars, words, uniq, sentences, max_sentence_words;
    size_t shout_words, exclaim, exclaim_runs, emoji, questions, digits;
    size_t bold_marks, lines, blank_lines;
    bool heading, bullets, code, link, cta, banned, you, double_space;
    size_t first_line_len;
};

static int clampi(long v)
{
    return v < 1 ? 1 : v > 10 ? 10 : (int)v;
}

static void text_stats(const char *text, struct stats *st)
{
    memset(st, 0, sizeof *st);
    uint64_t *set = calloc(WORDSET, sizeof *set);
    size_t sentence_words = 0;
    const unsigned char *p = (const unsigned char *)text;
    bool line_start = true;
    size_t line_len = 0;
    st->first_line_len = strcspn(text, "\n");
    while (*p) {
        if ((*p & 0xC0) != 0x80)
            st->chars++;
        if (line_start) {
            if (*p == '#')
                st->heading = true;
            if (p[0] == '*' && p[1] == '*')
                st->heading = true;
            if ((p[0] == '-' || p[0] == '*') && p[1] == ' ')
                st->bullets = true;
            if (isdigit(p[0]) && p[1] == '.' && p[2] == ' ')
                st->bullets = true;
            line_start = false;
        }
        if (*p == '\n') {
            st->lines++;
            if (line_len == 0)
                st->blank_lines++;
            line_len = 0;
            line_start = true;
            p++;
            continue;
        }
        line_len++;
        if (*p >= 0xF0 || (p[0] == 0xE2 && (p[1] == 0x9C || p[1] == 0x9D || p[1] == 0x98 ||
                                            p[1] == 0x99 || p[1] == 0xAD)))
            st->emoji++;
        if (isalnum(*p)) {
            const unsigned char *w = p;
            size_t n = 0, upper = 0, alpha = 0;
            uint64_t h = 0xcbf29ce484222325ULL;
            while (isalnum(w[n]) || w[n] == '\'') {
                if (isupper(w[n]))
                    upper++;
                if (isalpha(w[n]))
                    alpha++;
                if (isdigit(w[n]))
                    st->digits++;
                h = (h ^ (uint64_t)tolower(w[n])) * 0x100000001b3ULL;
                n++;
            }
            st->words++;
            sentence_words++;
            if (alpha >= 5 && upper == alpha)
                st->shout_words++;
            if (set) {
                if (h == 0)
                    h = 1;
                size_t cap = WORDSET, i = h % cap;
                for (size_t k = 0; k < cap; k++, i = (i + 1) % cap) {
                    if (set[i] == h)
                        break;
                    if (set[i] == 0) {
                        set[i] = h;
                        st->uniq++;
                        break;
                    }
                }
            }
            p += n;
            line_len += n - 1;
            continue;
        }
        if (*p == '!' || *p == '?' || *p == '.') {
            if (*p == '!') {
                st->exclaim++;
                if (p[1] == '!')
                    st->exclaim_runs++;
            }
            if (*p == '?')
                st->questions++;
            if (sentence_words > 0 && (p[1] == ' ' || p[1] == '\n' || p[1] == '\0')) {
                st->sentences++;
                if (sentence_words > st->max_sentence_words)
                    st->max_sentence_words = sentence_words;
                sentence_words = 0;
            }
        }
        if (p[0] == '*' && p[1] == '*') {
            st->bold_marks++;
            p++;
        }
        if (*p == '`')
            st->code = true;
        if (p[0] == ' ' && p[1] == ' ')
            st->double_space = true;
        p++;
    }
    if (sentence_words > 0) { /* trailing sentence without a full stop */
        st->sentences++;
        if (sentence_words > st->max_sentence_words)
            st->max_sentence_words = sentence_words;
    }
    free(set);
    st->link = icontains(text, "http://") || icontains(text, "https://");
    static const char *const ctas[] = {"try ",        "join",     "share",      "tell us",
                                       "let us know", "reply",    "check out",  "give it a",
                                       "drop ",       "comment",  "what would", "bring your",
                                       "add your",    "pick one", "catch up"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(ctas); i++)
        if (icontains(text, ctas[i]))
            st->cta = true;
    static const char *const banned[] = {"@everyone", "@here",     "buy now",     "click here",
                                         "act now",   "100% free", "limited time"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(banned); i++)
        if (icontains(text, banned[i]))
            st->banned = true;
    st->you = icontains(text, "you");
}

void btl__llm_score_text(const char *text, int scores[BTL_LLM_N_CRITERIA])
{
    struct stats st;
    text_stats(text ? text : "", &st);
    double uniq_ratio = st.words ? (double)st.uniq / (double)st.words : 0;
    double avg = st.sentences ? (double)st.words / (double)st.sentences : (double)st.words;
    bool sweet = st.chars >= 200 && st.chars <= 1500;
    bool tiny = st.chars < 80;

    long eng = 3 + (st.cta ? 3 : 0) + (st.questions ? 1 : 0) + (st.you ? 1 : 0) +
               (st.emoji >= 1 && st.emoji <= 4 ? 1 : 0) +
               (st.first_line_len > 0 && st.first_line_len <= 90 ? 1 : 0) - (tiny ? 3 : 0) -
               (uniq_ratio < 0.35 ? 3 : 0);
    long cla = 10;
    if (avg < 6)
        cla -= (long)((6 - avg) / 1.5) + 1;
    if (avg > 22)
        cla -= (long)((avg - 22) / 4) + 1;
    if (st.max_sentence_words > 40)
        cla -= 2;
    if (st.chars > 500 && st.blank_lines == 0)
        cla -= 2;
    if (uniq_ratio < 0.35)
        cla -= 4;
    if (tiny)
        cla -= 3;
    long val = 2 + (st.digits ? 1 : 0) + (st.code ? 2 : 0) + (st.bullets ? 2 : 0) +
               (sweet                               ? 2
                : st.chars >= 100 && st.chars < 200 ? 1
                                                    : 0) +
               (uniq_ratio > 0.5 ? 2 : 0) + (st.link ? 1 : 0) - (uniq_ratio < 0.35 ? 3 : 0);
    long tone = 10 - 2 * (long)(st.shout_words > 4 ? 4 : st.shout_words) -
                2 * (long)(st.exclaim_runs > 2 ? 2 : st.exclaim_runs) - (st.banned ? 3 : 0) -
                (st.exclaim > 3 ? 2 : 0);
    long pol = 5 + (st.heading ? 1 : 0) + (st.bullets || st.blank_lines ? 1 : 0) +
               (st.emoji == 0   ? 0
                : st.emoji <= 4 ? 2
                : st.emoji <= 8 ? 0
                                : -3) -
               (st.bold_marks % 2 ? 2 : 0) - (st.double_space ? 1 : 0) +
               (st.chars <= BTL_LLM_OFFLINE_MAX_CHARS ? 1 : -3) - (tiny ? 2 : 0) -
               (st.exclaim_runs ? 1 : 0);
    scores[0] = clampi(eng);
    scores[1] = clampi(cla);
    scores[2] = clampi(val);
    scores[3] = clampi(tone);
    scores[4] = clampi(pol);
}

static const char *const strengths[] = {"invites the reader to act", "easy to read",
                                        "concrete and useful", "friendly, calm tone",
                                        "clean formatting"};
static const char *const weaknesses[] = {
    "no clear call to action or hook", "sentences are too long or too choppy",
    "few concrete details", "shouting, exclamation runs or banned phrases",
    "formatting needs work (markdown, emoji, length)"};

/* One score object per "### POST <id>" ... "### END" block. */
static int reply_scores(const char *prompt, char **out, char *err, size_t errlen)
{
    json_t *arr = json_array();
    json_t *root = json_pack("{s:o}", "scores", arr);
    int rc = 0, n = 0;
    for (const char *p = strstr(prompt, "### POST "); p && n < MAX_POSTS;
         p = strstr(p, "### POST ")) {
        p += 9;
        size_t il = strcspn(p, "\r\n");
        char id[64];
        char *ids = trim_dup(p, il < sizeof id ? il : sizeof id - 1);
        btl_strlcpy(id, ids ? ids : "", sizeof id);
        free(ids);
        const char *body = p + il;
        if (id[0] == '\0') /* "### POST" without an id is not a block */
            continue;
        const char *end = strstr(body, "### END");
        const char *next = strstr(body, "### POST ");
        if (end == NULL || (next && next < end))
            end = next ? next : body + strlen(body);
        char *text = trim_dup(body, (size_t)(end - body));
        if (text == NULL) {
            rc = BTL_ENOMEM;
            goto out;
        }
        int s[BTL_LLM_N_CRITERIA];
        btl__llm_score_text(text, s);
        free(text);
        int best = 0, worst = 0;
        for (int i = 1; i < BTL_LLM_N_CRITERIA; i++) {
            if (s[i] > s[best])
                best = i;
            if (s[i] < s[worst])
                worst = i;
        }
        int64_t num;
        json_t *jid = btl_parse_i64(id, INT64_MIN, INT64_MAX, &num) == 0 ? json_integer(num)
                                                                         : json_string(id);
        json_t *o = json_pack("{s:o,s:i,s:i,s:i,s:i,s:i,s:s,s:s}", "id", jid, "engagement", s[0],
                              "clarity", s[1], "value", s[2], "tone", s[3], "polish", s[4],
                              "strengths", strengths[best], "weaknesses",
                              s[worst] >= 9 ? "nothing notable" : weaknesses[worst]);
        if (o == NULL || json_array_append_new(arr, o) != 0) {
            rc = BTL_ENOMEM;
            goto out;
        }
        n++;
        p = end;
    }
    if (n == 0) {
        btl_snprintf(err, errlen, "scoring prompt has no complete ### POST block");
        rc = BTL_EINVAL;
        goto out;
    }
    *out = json_dumps(root, JSON_COMPACT);
    if (*out == NULL)
        rc = BTL_ENOMEM;
out:
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------- other intents */

static int reply_critique(const char *draft, rng *r, char **out)
{
    int s[BTL_LLM_N_CRITERIA];
    btl__llm_score_text(draft, s);
    static const char *const fixes[BTL_LLM_N_CRITERIA][2] = {
        {"End with one clear call to action, such as a question for the reader.",
         "Open with a short hook line that tells the reader why to care."},
        {"Split the longest sentences; aim for 10 to 20 words each.",
         "Put one idea per paragraph and leave a blank line between them."},
        {"Add one concrete detail: a command, a number or a real example.",
         "Show the reader the exact step or setting, not just the benefit."},
        {"Drop the all-caps words and exclamation runs; keep the tone calm.",
         "Remove mass mentions and salesy phrases."},
        {"Use at most a few emoji and bold only the title.",
         "Keep it well under the length limit and check the markdown renders."},
    };
    int order[BTL_LLM_N_CRITERIA] = {0, 1, 2, 3, 4};
    for (int i = 0; i < BTL_LLM_N_CRITERIA; i++) /* weakest first, stable */
        for (int j = i + 1; j < BTL_LLM_N_CRITERIA; j++)
            if (s[order[j]] < s[order[i]])
                order[i] ^= order[j], order[j] ^= order[i], order[i] ^= order[j];
    btl_buf b;
    btl_buf_init(&b, 4096);
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++)
        rc = btl_buf_printf(&b, "%d. %s\n", i + 1, fixes[order[i]][rng_pick(r, 2)]);
    if (rc == 0 && (*out = btl_buf_steal(&b)) == NULL)
        rc = BTL_ENOMEM;
    btl_buf_free(&b);
    return rc;
}

/* Apply the usual fixes to a draft: no mass mentions, no exclamation
 * runs, a call to action, within the length limit. */
static int reply_rewrite(const char *draft, rng *r, char **out)
{
    btl_buf b;
    btl_buf_init(&b, 65536);
    int rc = 0;
    for (const char *p = draft; *p && rc == 0; p++) {
        if (strncasecmp(p, "@everyone", 9) == 0) {
            p += 8;
            continue;
        }
        if (strncasecmp(p, "@here", 5) == 0) {
            p += 4;
            continue;
        }
        if (*p == '!' && p[1] == '!')
            continue;
        rc = btl_buf_append(&b, p, 1);
    }
    struct stats st;
    if (rc == 0) {
        text_stats(b.data ? b.data : "", &st);
        if (!st.cta)
            rc = expand(&b, "\n\n{cta}", NULL, r, 0);
    }
    char *s = rc == 0 ? btl_buf_steal(&b) : NULL;
    btl_buf_free(&b);
    if (s == NULL)
        return rc ? rc : BTL_ENOMEM;
    cut_text(s, BTL_LLM_OFFLINE_MAX_CHARS);
    *out = s;
    return 0;
}

/* Field names from a "Required fields: a, b" line. */
static size_t parse_required(const char *prompt, char names[][64], size_t max)
{
    const char *p = strcasestr(prompt, "required fields:");
    if (p == NULL)
        return 0;
    p += 16;
    size_t n = 0;
    while (*p && *p != '\n' && n < max) {
        while (*p == ' ' || *p == ',' || *p == '"' || *p == '[')
            p++;
        size_t l = strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
        if (l == 0)
            break;
        if (l < 64) {
            memcpy(names[n], p, l);
            names[n++][l] = '\0';
        }
        p += l;
    }
    return n;
}

static bool name_in(const char *name, const char *const *set)
{
    for (; *set; set++)
        if (strcasecmp(name, *set) == 0)
            return true;
    return false;
}

/* A value for a required field nobody provided. */
static json_t *field_value(const char *name, const char *text, const char *angle, bool ok,
                           const char *reason)
{
    static const char *const text_f[] = {"text",  "post",    "body", "content",
                                         "draft", "message", NULL};
    static const char *const hook_f[] = {"hook", "title", "headline", "summary", "subject", NULL};
    static const char *const bool_f[] = {"ok", "valid", "approved", "pass", "passed", NULL};
    if (name_in(name, text_f))
        return json_string(text);
    if (strcasecmp(name, "angle") == 0 || strcasecmp(name, "category") == 0)
        return json_string(angle);
    if (name_in(name, hook_f)) {
        char *h = first_sentence(text);
        json_t *v = json_string(h ? h : "");
        free(h);
        return v;
    }
    if (name_in(name, bool_f))
        return json_boolean(ok);
    if (strcasecmp(name, "reason") == 0)
        return json_string(reason);
    if (strstr(name, "score")) {
        int s[BTL_LLM_N_CRITERIA], sum = 0;
        btl__llm_score_text(text, s);
        for (int i = 0; i < BTL_LLM_N_CRITERIA; i++)
            sum += s[i];
        return json_integer(sum);
    }
    if (strstr(name, "tags"))
        return json_pack("[ss]", "botticelli", angle);
    char *h = first_sentence(text);
    json_t *v = json_string(h && h[0] ? h : name);
    free(h);
    return v;
}

static int reply_json(const btl_llm_request *req, rng *r, char **out)
{
    int rc = 0;
    json_t *base = NULL;
    char *text = NULL;
    const char *prompt = req->prompt;
    /* An object in the material (after the instructions) is the base: an
     * audit prompt returns the same object with its verdict added. */
    const char *material = strstr(prompt, "\n\n");
    if (material) {
        char *js = NULL;
        if (btl_llm_extract_json(material, &js, NULL, 0) == 0) {
            base = json_loads(js, 0, NULL);
            if (!json_is_object(base)) {
                json_decref(base);
                base = NULL;
            }
        }
        free(js);
    }
    if (base == NULL)
        base = json_object();
    const char *angle = detect_angle(prompt);
    if (angle == NULL)
        angle = angles[rng_pick(r, BTL_ARRAY_LEN(angles))];
    const char *bt = json_string_value(json_object_get(base, "text"));
    if (bt)
        text = strdup(bt);
    else if (material && (text = find_draft(prompt)) != NULL)
        cut_text(text, BTL_LLM_OFFLINE_MAX_CHARS);
    else
        rc = generate_post(angle, NULL, r, &text);
    if (rc != 0 || text == NULL) {
        rc = rc ? rc : BTL_ENOMEM;
        goto out;
    }
    bool ok = strlen(text) <= BTL_LLM_OFFLINE_MAX_CHARS && !icontains(text, "@everyone") &&
              !icontains(text, "@here") && text[0] != '\0';
    const char *reason = ok ? "meets the rules" : "too long, empty or has a mass mention";

    char extra[16][64];
    static const char *const defaults[] = {"text", "angle", "hook", "ok", NULL};
    const char *const *fields = req->json_fields ? req->json_fields : defaults;
    size_t nextra = req->json_fields ? 0 : parse_required(prompt, extra, BTL_ARRAY_LEN(extra));
    for (size_t i = 0; fields[i]; i++)
        if (json_object_get(base, fields[i]) == NULL || strcasecmp(fields[i], "ok") == 0)
            json_object_set_new(base, fields[i], field_value(fields[i], text, angle, ok, reason));
    for (size_t i = 0; i < nextra; i++)
        if (json_object_get(base, extra[i]) == NULL)
            json_object_set_new(base, extra[i], field_value(extra[i], text, angle, ok, reason));
    if (!ok && json_object_get(base, "ok") && json_object_get(base, "reason") == NULL)
        json_object_set_new(base, "reason", json_string(reason));
    *out = json_dumps(base, JSON_COMPACT);
    if (*out == NULL)
        rc = BTL_ENOMEM;
out:
    free(text);
    json_decref(base);
    return rc;
}

int64_t btl__llm_count_tokens(const char *text)
{
    int64_t n = 0;
    for (const unsigned char *p = (const unsigned char *)text; p && *p;) {
        if (isalnum(*p)) {
            while (isalnum(*p))
                p++;
            n++;
        } else {
            if (!isspace(*p) && (*p & 0xC0) != 0x80)
                n++;
            p++;
        }
    }
    return n;
}

int btl__llm_offline_reply(const btl_llm_request *req, uint64_t seed, char **text_out, char *err,
                           size_t errlen)
{
    char dummy[8];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    if (req == NULL || req->prompt == NULL || text_out == NULL) {
        btl_snprintf(err, errlen, "NULL argument");
        return BTL_EINVAL;
    }
    *text_out = NULL;
    json_t *u1 = json_string(req->prompt), *u2 = req->system ? json_string(req->system) : NULL;
    bool bad = u1 == NULL || (req->system && u2 == NULL);
    json_decref(u1);
    json_decref(u2);
    if (bad) { /* replies quote the prompt; keep them valid UTF-8 */
        btl_snprintf(err, errlen, "prompt or system is not valid UTF-8");
        return BTL_EINVAL;
    }
    rng r = {seed};
    char head[HEAD_MAX];
    prompt_head(req->prompt, head, sizeof head);
    char intent[HEAD_MAX + 512];
    (void)btl_snprintf(intent, sizeof intent, "%.500s\n%s", req->system ? req->system : "", head);

    if (strstr(req->prompt, "### POST "))
        return reply_scores(req->prompt, text_out, err, errlen);
    if (req->json || icontains(intent, "json"))
        return reply_json(req, &r, text_out);
    bool critique = icontains(intent, "critique") || icontains(intent, "feedback") ||
                    icontains(intent, "review this");
    bool rewrite = icontains(intent, "rewrite") || icontains(intent, "refine") ||
                   icontains(intent, "revise") || icontains(intent, "improve") ||
                   icontains(intent, "polish");
    if (critique || rewrite) {
        char *draft = find_draft(req->prompt);
        if (draft) {
            int rc =
                critique ? reply_critique(draft, &r, text_out) : reply_rewrite(draft, &r, text_out);
            free(draft);
            return rc;
        }
    }
    const char *angle = detect_angle(req->prompt);
    if (angle == NULL) {
        for (size_t i = 0; i < BTL_ARRAY_LEN(angles) && angle == NULL; i++)
            if (icontains(head, angles[i]))
                angle = angles[i];
    }
    return generate_post(angle, strcasestr(req->prompt, "avoid"), &r, text_out);
}
