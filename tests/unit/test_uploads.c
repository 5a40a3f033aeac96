/* test_uploads.c - the upload workers (src/write/uploads.c) on the real
 * sequencer with the stand-in signer: a full queue refuses at once, the
 * answers of the uploads it took all come, and stopping joins the workers,
 * answers what never started with SG_EUNAVAILABLE and refuses later
 * submits. The `swu` format here is a stand-in whose finish waits at a gate,
 * so the test decides when the workers are busy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <dirent.h>
#include <pthread.h>
#include <sys/stat.h>

#include "core/codec.h"
#include "standin_signer.h"
#include "store/chain.h"
#include "store/store.h"
#include "write/upload.h"
#include "write/uploads.h"

static char tmpdir[] = "/tmp/signet-uploads-XXXXXX";
static keyring *kr;

/*** a `swu` that waits at a gate in finish ***/

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open, in_finish;

static sg_err gated_open(void **state, blob_upload *out, const struct upload_env *env, char *why,
                         size_t whylen)
{
    (void)env, (void)why, (void)whylen;
    *state = out;
    return SG_OK;
}

static sg_err gated_write(void *state, const void *data, size_t len, char *why, size_t whylen)
{
    return blob_upload_write(state, data, len, why, whylen);
}

static sg_err gated_finish(void *state, char *why, size_t whylen)
{
    (void)state, (void)why, (void)whylen;
    pthread_mutex_lock(&gate_mu);
    in_finish++;
    pthread_cond_broadcast(&gate_cv);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    in_finish--;
    pthread_mutex_unlock(&gate_mu);
    return SG_OK;
}

static void gated_free(void *state)
{
    (void)state;
}

const struct upload_format swu_upload_format = {"swu", gated_open, gated_write, gated_finish,
                                                gated_free};

static void set_gate(int open)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = open;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

static void wait_in_finish(int n)
{
    pthread_mutex_lock(&gate_mu);
    while (in_finish < n)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}

/*** answers ***/

static pthread_mutex_t done_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static int ndone;

static void on_done(void *ud)
{
    (void)ud;
    pthread_mutex_lock(&done_mu);
    ndone++;
    pthread_cond_broadcast(&done_cv);
    pthread_mutex_unlock(&done_mu);
}

static void wait_done(int n)
{
    pthread_mutex_lock(&done_mu);
    while (ndone < n)
        pthread_cond_wait(&done_cv, &done_mu);
    pthread_mutex_unlock(&done_mu);
}

/*** fixture ***/

static sg_config cfg;
static struct principal ci = {.name = "ci"};
static sequencer *seq;
static uploads *pool;
static char data_dir[256], uri[300];
static int case_no;

static void start(void)
{
    char why[256];
    store *st;
    case_no++;
    snprintf(data_dir, sizeof(data_dir), "%s/data-%d", tmpdir, case_no);
    snprintf(uri, sizeof(uri), "sqlite:%s/events-%d.db", tmpdir, case_no);
    assert_int_equal(mkdir(data_dir, 0700), 0);
    assert_int_equal(store_create(uri, &st, why, sizeof(why)), SG_OK);
    store_close(st);
    cfg = (sg_config){.data_dir = data_dir, .max_image_bytes = 1 << 20, .sign_timeout_ms = 2000};
    struct sequencer_opts o = {.store_uri = uri, .signer = &standin, .kr = kr, .cfg = &cfg};
    chain_genesis(&o.trusted);
    assert_int_equal(sequencer_start(&o, &seq, why, sizeof(why)), SG_OK);
    assert_int_equal(uploads_start(&cfg, &standin, seq, &pool, why, sizeof(why)), SG_OK);
    set_gate(0);
    ndone = 0;
}

static void stop(void)
{
    uploads_stop(pool, sg_mono_ms());
    sequencer_stop(seq);
    sequencer_free(seq);
    uploads_free(pool);
}

/* A new `swu` upload of a few distinct bytes, body complete. */
static upload *new_upload(int i)
{
    char version[32], why[256], body[64];
    upload *u;
    snprintf(version, sizeof(version), "1.%d", i);
    struct upload_request rq = {"fw", version, "hw-a", "swu", 1, &ci, NULL, NULL};
    assert_int_equal(upload_open(pool, &rq, &u, why, sizeof(why)), SG_OK);
    int n = snprintf(body, sizeof(body), "image %d of case %d", i, case_no);
    assert_int_equal(upload_write(u, body, (size_t)n, why, sizeof(why)), SG_OK);
    return u;
}

static int count_blobs(void)
{
    char dir[300];
    int n = 0;
    snprintf(dir, sizeof(dir), "%s/blobs/sha256", data_dir);
    DIR *d = opendir(dir);
    for (struct dirent *de; d && (de = readdir(d)) != NULL;)
        n += strlen(de->d_name) == 64;
    if (d)
        closedir(d);
    return n;
}

static int setup(void **state)
{
    (void)state;
    return (kr = standin_open(tmpdir)) != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s/data-*", tmpdir);
    if (system(cmd) != 0)
        return -1;
    return standin_close(kr, tmpdir);
}

/*** tests ***/

#define TAKEN (UPLOADS_WORKERS + UPLOADS_QUEUE)

static void test_full_queue_refuses_at_once(void **state)
{
    (void)state;
    char why[256];
    const char *detail;
    char *body;
    int status;
    upload *us[TAKEN + 1];
    start();
    for (int i = 0; i <= TAKEN; i++)
        us[i] = new_upload(i);
    for (int i = 0; i < UPLOADS_WORKERS; i++)
        assert_int_equal(upload_submit(us[i], on_done, NULL, why, sizeof(why)), SG_OK);
    wait_in_finish(UPLOADS_WORKERS);
    for (int i = UPLOADS_WORKERS; i < TAKEN; i++)
        assert_int_equal(upload_submit(us[i], on_done, NULL, why, sizeof(why)), SG_OK);
    assert_int_equal(upload_submit(us[TAKEN], on_done, NULL, why, sizeof(why)), SG_EUNAVAILABLE);
    assert_non_null(strstr(why, "too many uploads"));
    upload_free(us[TAKEN]);
    set_gate(1);
    wait_done(TAKEN);
    for (int i = 0; i < TAKEN; i++) {
        assert_int_equal(upload_result(us[i], &status, &body, &detail), SG_OK);
        assert_int_equal(status, 201);
        assert_non_null(strstr(body, "\"firmware_id\":\"sha256:"));
        free(body);
        upload_free(us[i]);
    }
    assert_int_equal(count_blobs(), TAKEN);
    stop();
    assert_int_equal(ndone, TAKEN);
}

struct stopper {
    pthread_t t;
    uint64_t deadline;
};

static void *stop_main(void *arg)
{
    struct stopper *s = arg;
    uploads_stop(pool, s->deadline);
    return NULL;
}

static void test_stop_joins_and_answers_the_rest(void **state)
{
    (void)state;
    char why[256];
    const char *detail;
    char *body;
    int status, queued = 3;
    upload *us[UPLOADS_WORKERS + UPLOADS_QUEUE];
    start();
    for (int i = 0; i < UPLOADS_WORKERS + queued; i++) {
        us[i] = new_upload(i);
        assert_int_equal(upload_submit(us[i], on_done, NULL, why, sizeof(why)), SG_OK);
    }
    wait_in_finish(UPLOADS_WORKERS);
    /* Stop with a deadline already past: what waits never starts. */
    struct stopper s = {.deadline = sg_mono_ms()};
    assert_int_equal(pthread_create(&s.t, NULL, stop_main, &s), 0);
    upload *late = new_upload(99);
    sg_err e;
    while ((e = upload_submit(late, on_done, NULL, why, sizeof(why))) == SG_OK) {
        /* taken before the stop began: one more that must not start */
        us[UPLOADS_WORKERS + queued++] = late;
        /* The stopper may not run for a while on a loaded machine: the
         * queue has room for all that come before it does. */
        assert_true(queued < UPLOADS_QUEUE);
        late = new_upload(100 + queued);
        usleep(1000);
    }
    assert_int_equal(e, SG_EUNAVAILABLE);
    assert_non_null(strstr(why, "shutting down"));
    upload_free(late);
    set_gate(1);
    assert_int_equal(pthread_join(s.t, NULL), 0);
    /* Every worker is gone: all answers are in (those in hand went through
     * the sequencer, which is still running). */
    wait_done(UPLOADS_WORKERS + queued);
    for (int i = 0; i < UPLOADS_WORKERS + queued; i++) {
        e = upload_result(us[i], &status, &body, &detail);
        if (i < UPLOADS_WORKERS) {
            assert_int_equal(e, SG_OK);
            assert_int_equal(status, 201);
            free(body);
        } else {
            assert_int_equal(e, SG_EUNAVAILABLE);
            assert_non_null(strstr(detail, "shutting down"));
        }
        upload_free(us[i]);
    }
    assert_int_equal(count_blobs(), UPLOADS_WORKERS); /* the refused were never linked */
    stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_queue_refuses_at_once),
        cmocka_unit_test(test_stop_joins_and_answers_the_rest),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
