/* test_ddi.c - the DDI facade's write side without a sequencer: validation
 * of configData, cancel acknowledgements and closed feedback, and apply()
 * folding events into the state the facade decides on (attributes, the last
 * acknowledged cancel, the rollouts' offer epochs, the images a device
 * installed), and the hashing thread that reads an image's SHA-1 and MD5
 * for deploymentBase off the request threads. The decisions run end to end
 * in tests/e2e/test_ddi.py. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/membership.h"
#include "read/ddi_hashes.h"
#include "validate_check.h"
#include "write/wreq.h"

#define FW1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define FW2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"

static void test_attributes_validate(void **state)
{
    (void)state;
    json_t *in;
    assert_int_equal(validate_check(&wreq_record_attributes,
                                    "{\"data\":{\"board\":\"b\",\"rev\":\"1\"}}", "dev-1", &in),
                     SG_OK);
    assert_string_equal(json_string_value(json_object_get(in, "mode")), "merge");
    json_decref(in);
    assert_int_equal(
        validate_check(&wreq_record_attributes, "{\"mode\":\"replace\",\"data\":{}}", "dev-1", &in),
        SG_OK);
    json_decref(in);
    char big[700];
    memset(big, 'v', 600);
    big[600] = '\0';
    char body[800];
    snprintf(body, sizeof(body), "{\"data\":{\"a\":\"%s\"}}", big);
    const char *const bad[] = {
        "{\"data\":{\"a\":1}}",
        "{\"data\":[]}",
        "{\"mode\":\"sideways\",\"data\":{}}",
        "{\"data\":{},\"x\":1}",
        "{}",
        "{\"data\":{\"\":\"v\"}}",
        "{\"data\":{\"a\":null}}",
        body,
    };
    for (size_t i = 0; i < SG_ARRAY_LEN(bad); i++)
        assert_int_equal(validate_check(&wreq_record_attributes, bad[i], "dev-1", &in),
                         SG_EBADINPUT);
    assert_int_equal(validate_check(&wreq_record_attributes, "{\"data\":{}}", "../x", &in),
                     SG_EBADINPUT);
    /* 65 attributes: too many */
    json_t *many = json_object();
    for (int i = 0; i < 65; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        json_object_set_new(many, k, json_string("v"));
    }
    json_t *b = json_pack("{s:o}", "data", many);
    char detail[256];
    assert_int_equal(wreq_record_attributes.validate(b, "dev-1", &in, detail, sizeof(detail)),
                     SG_EBADINPUT);
    json_decref(b);
}

static void test_cancel_and_feedback_validate(void **state)
{
    (void)state;
    json_t *in;
    assert_int_equal(validate_check(&wreq_ack_cancel, "{\"action_id\":2147483647}", "dev-1", &in),
                     SG_OK);
    json_decref(in);
    assert_int_equal(validate_check(&wreq_ack_cancel, "{\"action_id\":2147483648}", "dev-1", &in),
                     SG_EBADINPUT);
    assert_int_equal(validate_check(&wreq_ack_cancel, "{\"action_id\":0}", "dev-1", &in),
                     SG_EBADINPUT);
    assert_int_equal(validate_check(&wreq_ack_cancel, "{\"action_id\":\"5\"}", "dev-1", &in),
                     SG_EBADINPUT);
    assert_int_equal(validate_check(&wreq_ddi_feedback,
                                    "{\"action_id\":7,\"status\":\"failed\",\"detail\":\"x\"}",
                                    "dev-1", &in),
                     SG_OK);
    json_decref(in);
    assert_int_equal(
        validate_check(&wreq_ddi_feedback, "{\"action_id\":7,\"status\":\"maybe\"}", "dev-1", &in),
        SG_EBADINPUT);
    assert_int_equal(validate_check(&wreq_ddi_feedback,
                                    "{\"action_id\":-1,\"status\":\"installed\"}", "dev-1", &in),
                     SG_EBADINPUT);
    assert_int_equal(validate_check(&wreq_ddi_feedback,
                                    "{\"action_id\":7,\"status\":\"installed\",\"more\":1}",
                                    "dev-1", &in),
                     SG_EBADINPUT);
}

static void apply(wstate *s, const char *type, json_int_t pos, json_t *data)
{
    json_t *ev = json_pack("{s:s, s:I, s:o}", "type", type, "position", pos, "data", data);
    assert_non_null(ev);
    assert_int_equal(ddi_aggregate.apply(s, type, ev), SG_OK);
    json_decref(ev);
}

static void assert_state(wstate *s, const char *ns, const char *key, const char *want)
{
    const char *got = wstate_get(s, ns, key);
    if (want == NULL) {
        assert_null(got);
        return;
    }
    assert_non_null(got);
    assert_string_equal(got, want);
}

static void test_apply(void **state)
{
    (void)state;
    wstate *s = wstate_new();
    assert_non_null(s);
    apply(s, "DeviceAttributesRecorded", 3,
          json_pack("{s:s, s:{s:s, s:s}}", "device_id", "d1", "attributes", "rev", "1", "board",
                    "b"));
    assert_state(s, "ddi_attrs", "d1", "{\"board\":\"b\",\"rev\":\"1\"}");
    apply(s, "OfferCancelAcknowledged", 4,
          json_pack("{s:s, s:i}", "device_id", "d1", "action_id", 9));
    assert_state(s, "ddi_cancel", "d1", "{\"action_id\":9}");

    apply(s, "RolloutStarted", 10,
          json_pack("{s:s, s:s, s:s, s:[i], s:i, s:i, s:i}", "rollout_id", "r1", "firmware_id", FW2,
                    "hardware", "hw", "stages", 100, "failure_threshold_ppm", 1, "min_reports", 1,
                    "security_version", 1));
    assert_state(s, "ddi_rollout", "r1",
                 "{\"active\":true,\"firmware_id\":\"" FW2
                 "\",\"hardware\":\"hw\",\"install\":[[10,100]],\"sv\":1}");
    assert_state(s, "ddi_class", "hw", "[\"r1\"]");
    apply(s, "RolloutPaused", 11, json_pack("{s:s}", "rollout_id", "r1"));
    apply(s, "RolloutResumed", 12, json_pack("{s:s}", "rollout_id", "r1"));
    apply(s, "RolloutRolledBack", 13,
          json_pack("{s:s, s:i, s:i}", "rollout_id", "r1", "devices", 1, "blocked", 0));
    assert_state(s, "ddi_rollout", "r1",
                 "{\"active\":false,\"firmware_id\":\"" FW2
                 "\",\"hardware\":\"hw\",\"install\":[[10,100],[12,100]],\"rollback\":13,"
                 "\"sv\":1}");
    /* an unknown rollout's switch changes nothing */
    apply(s, "RolloutResumed", 14, json_pack("{s:s}", "rollout_id", "nope"));
    assert_state(s, "ddi_rollout", "nope", NULL);
    wstate_free(s);
}

/*** the offer index (issue 14, defects 13, 16, 17 and 22) ***/

/* Fold an event through every aggregate, as the sequencer does. */
static void fold(wstate *s, const char *type, json_int_t pos, json_t *data)
{
    json_t *ev = json_pack("{s:s, s:I, s:o}", "type", type, "position", pos, "data", data);
    assert_non_null(ev);
    for (size_t i = 0; i < sg_naggregates; i++)
        assert_int_equal(sg_aggregates[i]->apply(s, type, ev), SG_OK);
    json_decref(ev);
}

static void start_rollout(wstate *s, const char *rid, json_int_t pos, int first_pct)
{
    fold(s, "RolloutStarted", pos,
         json_pack("{s:s, s:s, s:s, s:[i,i], s:i, s:i, s:i}", "rollout_id", rid, "firmware_id", FW1,
                   "hardware", "hw", "stages", first_pct, 100, "failure_threshold_ppm", 1,
                   "min_reports", 1, "security_version", 1));
}

static double mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void test_offer_index(void **state)
{
    (void)state;
    wstate *s = wstate_new();
    assert_non_null(s);
    /* a device in r1 at 100 % but not at 10 % */
    char dev[16] = "";
    for (int i = 0; i < 1000 && !dev[0]; i++) {
        snprintf(dev, sizeof(dev), "d%d", i);
        if (membership_in("r1", dev, 10) || !membership_in("r1", dev, 100))
            dev[0] = '\0';
    }
    assert_true(dev[0]);
    fold(s, "DeviceRegistered", 1, json_pack("{s:s, s:s}", "device_id", dev, "hardware", "hw"));
    start_rollout(s, "r1", 5, 10);
    struct ddi_offer o;
    int32_t at5 = membership_offer("r1", dev, "install", FW1, 5);
    /* Not a member yet: its would-be action id names no offer (defect 22). */
    assert_false(ddi_find_offer(s, dev, at5, &o));
    fold(s, "RolloutAdvanced", 6,
         json_pack("{s:s, s:i, s:i}", "rollout_id", "r1", "stage", 1, "percent", 100));
    assert_true(ddi_find_offer(s, dev, at5, &o));
    assert_string_equal(o.rollout_id, "r1");
    assert_string_equal(o.firmware_id, FW1);
    assert_false(o.rollback);
    assert_false(o.withdrawn);
    assert_false(ddi_find_offer(s, dev, at5 ^ 1, &o));
    assert_false(ddi_find_offer(s, "nobody", at5, &o));
    /* Paused: withdrawn; resumed: a new offer, the old one stays withdrawn. */
    fold(s, "RolloutPaused", 7, json_pack("{s:s}", "rollout_id", "r1"));
    assert_true(ddi_find_offer(s, dev, at5, &o));
    assert_true(o.withdrawn);
    fold(s, "RolloutResumed", 8, json_pack("{s:s}", "rollout_id", "r1"));
    assert_true(ddi_find_offer(s, dev, membership_offer("r1", dev, "install", FW1, 8), &o));
    assert_false(o.withdrawn);
    assert_true(ddi_find_offer(s, dev, at5, &o));
    assert_true(o.withdrawn);
    /* The security_version floor (defect 13): once the device reported an
     * image of security_version 2 installed, the offer of 1 was never made. */
    fold(s, "DeviceReported", 9,
         json_pack("{s:s, s:s, s:s, s:i}", "device_id", dev, "firmware_id", FW2, "status",
                   "installed", "security_version", 2));
    assert_false(ddi_find_offer(s, dev, at5, &o));

    /* 10,000 rollouts of the device's class (defect 17): an unknown action id
     * costs the same as with one. */
    fold(s, "DeviceRegistered", 10, json_pack("{s:s, s:s}", "device_id", "x", "hardware", "hw"));
    char rid[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(rid, sizeof(rid), "r%d", 100 + i);
        start_rollout(s, rid, 100 + i, 100);
    }
    assert_true(ddi_find_offer(s, "x", membership_offer(rid, "x", "install", FW1, 100 + 9999), &o));
    assert_string_equal(o.rollout_id, rid);
    double t0 = mono_ms();
    int n = 0;
    for (int32_t a = 1; a <= 200; a++)
        n += ddi_find_offer(s, "x", a, &o);
    double each = (mono_ms() - t0) / 200;
    print_message("an unknown action id with 10,000 rollouts: %.3f ms\n", each);
    assert_true(each < 2.0); /* 23.7 ms before the index */
    wstate_free(s);
}

/* The devices aggregate counts each device principal's events per minute
 * of their time (what devices_over_rate() decides on). */
static void test_device_rate_count(void **state)
{
    (void)state;
    wstate *s = wstate_new();
    const char *times[] = {"2026-12-08T00:01:59.900Z", "2026-12-08T00:02:00.000Z",
                           "2026-12-08T00:02:30.000Z"};
    const char *types[] = {"DeviceReported", "DeviceAttributesRecorded", "OfferCancelAcknowledged"};
    for (int i = 0; i < 3; i++) {
        json_t *ev =
            json_pack("{s:s, s:i, s:s, s:s, s:{s:s, s:s, s:s, s:i, s:{}}}", "type", types[i],
                      "position", i + 1, "actor", "dev:d1", "time", times[i], "data", "device_id",
                      "d1", "firmware_id", FW1, "status", "failed", "action_id", 5, "attributes");
        assert_int_equal(devices_aggregate.apply(s, types[i], ev), SG_OK);
        json_decref(ev);
    }
    assert_state(s, "device_rate", "dev:d1", "{\"events\":2,\"minute\":\"2026-12-08T00:02\"}");
    /* other events are not counted */
    json_t *ev =
        json_pack("{s:s, s:i, s:s, s:s, s:{s:s, s:s}}", "type", "DeviceRegistered", "position", 9,
                  "actor", "ops", "time", times[2], "data", "device_id", "d2", "hardware", "hw");
    assert_int_equal(devices_aggregate.apply(s, "DeviceRegistered", ev), SG_OK);
    json_decref(ev);
    assert_state(s, "device_rate", "ops", NULL);
    wstate_free(s);
}

/*** the hashing thread ***/

/* sha256("abc"): the blob's name; its SHA-1 and MD5 are the FIPS / RFC 1321
 * test vectors. */
#define ABC_ID "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define ABC_SHA1 "a9993e364706816aba3e25717850c26c9cd0d89d"
#define ABC_MD5 "900150983cd24fb0d6963f7d28e17f72"

static pthread_mutex_t done_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static int ndone;

static void on_done(void *ud)
{
    pthread_mutex_lock(&done_mu);
    (*(int *)ud)++;
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

static void test_hashing_thread(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_ddi.XXXXXX", path[256], sha1[41], md5[33];
    uint64_t size = 0;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/blobs", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/blobs/sha256", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/blobs/sha256/%s", dir, ABC_ID + 7);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("abc", f);
    fclose(f);

    assert_false(ddi_hashes_cached(ABC_ID, sha1, md5, &size));
    /* Three tickets for one image and one for an image with no blob: each
     * done exactly once; the first reading answers all three. */
    int calls[4] = {0};
    ddi_hash_ticket *t[4];
    for (int i = 0; i < 4; i++) {
        t[i] = ddi_hash_ticket_new(dir, i < 3 ? ABC_ID : FW1, on_done, &calls[i]);
        assert_non_null(t[i]);
        assert_int_equal(ddi_hashes_submit(t[i]), SG_OK);
    }
    wait_done(4);
    for (int i = 0; i < 3; i++) {
        memset(sha1, 0, sizeof(sha1));
        assert_int_equal(calls[i], 1);
        assert_string_equal(ddi_hash_ticket_image(t[i]), ABC_ID);
        assert_int_equal(ddi_hash_ticket_result(t[i], sha1, md5, &size), SG_OK);
        assert_string_equal(sha1, ABC_SHA1);
        assert_string_equal(md5, ABC_MD5);
        assert_int_equal(size, 3);
    }
    assert_int_equal(calls[3], 1);
    assert_int_equal(ddi_hash_ticket_result(t[3], sha1, md5, &size), SG_ENOTFOUND);
    for (int i = 0; i < 4; i++)
        ddi_hash_ticket_free(t[i]);
    memset(sha1, 0, sizeof(sha1));
    assert_true(ddi_hashes_cached(ABC_ID, sha1, md5, &size));
    assert_string_equal(sha1, ABC_SHA1);

    /* Stopped: a submit is refused (and its done never called). */
    ddi_hashes_stop();
    int late = 0;
    ddi_hash_ticket *l = ddi_hash_ticket_new(dir, ABC_ID, on_done, &late);
    assert_int_equal(ddi_hashes_submit(l), SG_EUNAVAILABLE);
    assert_int_equal(ddi_hash_ticket_result(l, sha1, md5, &size), SG_EUNAVAILABLE);
    assert_int_equal(late, 0);
    ddi_hash_ticket_free(l);
    assert_int_equal(unlink(path), 0);
    snprintf(path, sizeof(path), "%s/blobs/sha256", dir);
    rmdir(path);
    snprintf(path, sizeof(path), "%s/blobs", dir);
    rmdir(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attributes_validate),
        cmocka_unit_test(test_cancel_and_feedback_validate),
        cmocka_unit_test(test_apply),
        cmocka_unit_test(test_offer_index),
        cmocka_unit_test(test_device_rate_count),
        cmocka_unit_test(test_hashing_thread), /* last: it stops the thread for good */
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
