/* config.h - capmoe-server configuration: one option table drives the JSON
 * file, the CAPMOE_* environment variables, the command-line flags and --help.
 *
 * Precedence, lowest first: built-in defaults < JSON file (--config FILE or
 * CAPMOE_CONFIG) < environment CAPMOE_<UPPER_NAME> < flags --kebab-name.
 * An invalid value anywhere is refused with a message naming the option and
 * where it came from; unknown keys in the file and unknown flags are refused.
 *
 *   name                      type            default        meaning
 *   ------------------------  --------------  -------------  ---------------------------------------
 *   model                     path            config/model   Hugging Face model directory
 *   model_name                string          ""             id served in /v1/models ("" = basename of model)
 *   chat_template             string          ""             a Jinja file or a built-in family replacing the
 *                                                            model's chat template ("" = the model's own)
 *   host                      string          127.0.0.1      address to listen on (IPv4/IPv6 literal or name)
 *   port                      int 0..65535    8080           TCP port (0 = any free port, logged at start)
 *   api_key                   string          ""             when set, the /v1 routes, /tokenize, /detokenize need
 *                                                            "Authorization: Bearer <key>"
 *   policy                    enum            none           none|drop|reroute|expanded|rank_drop|piggyback
 *   capacity_factor           number|"auto"   1.0            gamma, or "auto" (per-dispatch tuning)
 *   ep_ranks                  int 1..64       1              expert-parallel ranks (worker threads)
 *   ep                        threads|mpi     threads        mpi: the ranks are the processes of mpirun
 *   ep_step_timeout_s         number          60             --ep mpi: a longer step is a fault
 *   renormalize               bool            false          rescale kept top-k weights after a policy
 *   min_tokens                int >= 0        16             no capacity limit below this many tokens
 *   drop_budget               number 0..1     0.01           dropped routing mass allowed under auto
 *   piggyback_k0              int 0..64       0              piggyback: experts of its own a token keeps
 *                                                            (0 = max(1, k/2))
 *   decode_policy             off|policy      off            policy of dispatches below regime_tokens
 *   regime_tokens             int|"auto"      auto           below it a dispatch is memory-bound (auto:
 *                                                            measured when the model loads)
 *   max_batch_tokens          int             512            token budget of one scheduler step
 *   max_running               int             16             sequences decoded together
 *   max_queue                 int             256            requests waiting for a slot (then 429)
 *   context                   int >= 0        0              tokens per sequence (0 = the model's)
 *   max_body_bytes            int             1048576        request body limit (413 above)
 *   grace_period_s            number          30             SIGTERM: time running requests get to finish
 *   request_timeout_s         number          0              generation wall-clock limit from arrival
 *                                                            (0 = none); ends with finish_reason length
 *   connection_timeout_s      int             60             idle HTTP connection timeout (0 = none)
 *   header_timeout_s          int             10             a new connection must send a whole request
 *                                                            header this soon (0 = connection_timeout_s)
 *   max_connections           int             512            concurrent HTTP connections
 *   max_connections_per_ip    int             0              concurrent connections per client address
 *                                                            (0 = no per-address limit)
 *   metrics_per_layer_expert  bool            false          expert-token counters per {layer,expert}
 *   threads                   int 0..64       0              engine threads (0 = one per usable CPU)
 *   weights                   enum            bf16           bf16|q8|q4: experts quantized at load
 *   quantize                  experts|all     experts        what weights q8|q4 quantizes (all: attention,
 *                                                            shared/dense MLPs and lm_head too)
 *   compute                   f32|bf16        f32            precision of the experts' large products
 *   kv_dtype                  f32|bf16        f32            element type of the KV cache
 *   log_level                 enum            info           debug|info|warn|error
 *   log_format                enum            text           text|json
 *   access_log                bool            true           one info record per HTTP request
 *   tls_cert, tls_key         path            ""             HTTPS certificate (chain) and key (PEM)
 *   cors_origins              string          ""             comma-separated allowed origins, or *
 *
 * Live options (the OPT_LIVE column of the table in server/config.c; SIGHUP
 * applies them without a restart): api_key, policy, capacity_factor,
 * renormalize, min_tokens, drop_budget, piggyback_k0, decode_policy,
 * regime_tokens, log_level, access_log, cors_origins.
 *
 * Flag-only: --config FILE, --help, --version, --healthcheck (GET /health on
 * host:port; exit 0 when it answers 200, else 1). */
#ifndef CAPMOE_CONFIG_H
#define CAPMOE_CONFIG_H

#include <stdio.h>

#include "capmoe/common.h"
#include "capmoe/dispatch.h"
#include "capmoe/hfconfig.h"

typedef struct capmoe_config {
    char *model;                 /* malloc'd; owned by the config */
    char *model_name;            /* malloc'd ("" = basename of model) */
    char *chat_template;         /* malloc'd ("" = the model's own template) */
    char *host;                  /* malloc'd */
    int port;
    char *api_key;               /* malloc'd ("" = no authentication) */
    int policy;                  /* capmoe_policy */
    double capacity_factor;      /* gamma when !capacity_auto */
    int capacity_auto;           /* 1: "auto" */
    int ep_ranks;
    char *ep;                    /* malloc'd: "threads" or "mpi" */
    double ep_step_timeout_s;
    int renormalize;
    int min_tokens;
    double drop_budget;
    int piggyback_k0;            /* 0: max(1, k/2) */
    int decode_policy;           /* OPT_CHOICE index: 0 off, else capmoe_policy + 1 */
    int regime_tokens;           /* when !regime_auto */
    int regime_auto;             /* 1: "auto" (the crossover measured at load) */
    int max_batch_tokens;
    int max_running;
    int max_queue;
    int context;
    long long max_body_bytes;
    double grace_period_s;
    double request_timeout_s;
    int connection_timeout_s;
    int header_timeout_s;
    int max_connections;
    int max_connections_per_ip;
    int metrics_per_layer_expert;
    int threads;
    int weights;                 /* capmoe_weights */
    int quantize;                /* capmoe_quant_scope: 0 experts, 1 all */
    int compute;                 /* capmoe_compute: 0 f32, 1 bf16 */
    int kv_dtype;                /* capmoe_kv_dtype: 0 f32, 1 bf16 */
    int log_level;               /* capmoe_log_level */
    int log_format;              /* capmoe_log_format */
    int access_log;
    char *tls_cert;              /* malloc'd ("" = plain HTTP) */
    char *tls_key;               /* malloc'd */
    char *cors_origins;          /* malloc'd ("" = no CORS) */
    char *config_file;           /* malloc'd path of the file read, NULL if none */
} capmoe_config;

typedef enum capmoe_config_action {
    CAPMOE_CONFIG_RUN = 0,       /* start the server */
    CAPMOE_CONFIG_HELP,          /* --help: print capmoe_config_help and exit 0 */
    CAPMOE_CONFIG_VERSION,       /* --version */
    CAPMOE_CONFIG_HEALTHCHECK    /* --healthcheck: probe host:port/health */
} capmoe_config_action;

/* Fills the built-in defaults (allocates the default strings). */
void capmoe_config_defaults(capmoe_config *cfg);
/* Frees the strings; cfg may then be reused after capmoe_config_defaults. */
void capmoe_config_free(capmoe_config *cfg);

/* Builds cfg from defaults, the JSON file, envp (NULL-terminated "K=V"
 * strings, e.g. environ; NULL = none) and argv[1..argc-1]. On success
 * returns 0 and stores the requested action; on error returns -1 with a
 * message naming the option. cfg must be freed in both cases. */
int capmoe_config_load(capmoe_config *cfg, int argc, char **argv, char *const *envp,
                       capmoe_config_action *action, capmoe_error *err);

/* Applies a JSON object text (the file format) on top of cfg. what names the
 * source in messages (the file path). */
int capmoe_config_apply_json(capmoe_config *cfg, const char *json, size_t len,
                             const char *what, capmoe_error *err);
/* Applies one option by its name (snake_case) from a string value, as the
 * environment and flags do. what names the source ("--port", "CAPMOE_PORT"). */
int capmoe_config_set(capmoe_config *cfg, const char *name, const char *value,
                      const char *what, capmoe_error *err);
/* Cross-option checks (max_batch_tokens >= max_running, ...). */
int capmoe_config_check(const capmoe_config *cfg, capmoe_error *err);

/* Checks cfg against the model's config.json before the server listens:
 * ep_ranks must divide the expert count (and not exceed it), the dispatch
 * options must suit the model, context must fit max_position_embeddings. */
int capmoe_config_check_model(const capmoe_config *cfg, const capmoe_hfconfig *hc,
                              capmoe_error *err);

/* Reload support. capmoe_config_diff calls fn for every option whose value
 * differs between a (old) and b (new), with live = 1 for options a reload
 * applies at once, and both values as text for a log (secrets shown as
 * "(set)" / "(empty)"). Returns the number of differing options. */
typedef void (*capmoe_config_diff_fn)(void *user, const char *name, int live,
                                      const char *old_value, const char *new_value);
int capmoe_config_diff(const capmoe_config *a, const capmoe_config *b, capmoe_config_diff_fn fn,
                       void *user);
int capmoe_config_is_live(const char *name);
/* Copies one option's value from src to dst (strings duplicated). 0 / -1. */
int capmoe_config_copy_option(capmoe_config *dst, const capmoe_config *src, const char *name);

/* Writes the --help text: every option with its flag, variable and default. */
void capmoe_config_help(FILE *out, const char *prog);
/* Writes cfg as a JSON object of every option (the file format). malloc'd. */
char *capmoe_config_to_json(const capmoe_config *cfg);

/* The dispatch configuration the options describe. */
void capmoe_config_dispatch(const capmoe_config *cfg, capmoe_dispatch_cfg *out);
/* The served model id: model_name, or the last path component of model
 * (trailing slashes ignored). malloc'd; caller frees. */
char *capmoe_config_model_id(const capmoe_config *cfg);

#endif
