/* test_ddi.c - the DDI facade's write side without a sequencer: validation
 * of configData, cancel acknowledgements and closed feedback, and apply()
 * folding events into the state the facade decides on (attributes, the last
 * acknowledged cancel, the rollouts' offer epochs, the images a device
 * installed). The decisions run end to end in tests/e2e/test_ddi.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "write/wreq.h"

#define FW1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define FW2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"

static sg_err validate(const struct wreq_type *t, const char *body, const char *path_id,
                       json_t **input)
{
    char detail[256] = "";
    json_t *b = json_loads(body, 0, NULL);
    assert_non_null(b);
    *input = NULL;
    sg_err e = t->validate(b, path_id, input, detail, sizeof(detail));
    if (e)
        assert_true(detail[0] != '\0'); /* every refusal says why */
    else
        assert_non_null(*input);
    json_decref(b);
    return e;
}

static void test_attributes_validate(void **state)
{
    (void)state;
    json_t *in;
    assert_int_equal(validate(&wreq_record_attributes, "{\"data\":{\"board\":\"b\",\"rev\":\"1\"}}",
                              "dev-1", &in),
                     SG_OK);
    assert_string_equal(json_string_value(json_object_get(in, "mode")), "merge");
    json_decref(in);
    assert_int_equal(
        validate(&wreq_record_attributes, "{\"mode\":\"replace\",\"data\":{}}", "dev-1", &in),
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
        assert_int_equal(validate(&wreq_record_attributes, bad[i], "dev-1", &in), SG_EBADINPUT);
    assert_int_equal(validate(&wreq_record_attributes, "{\"data\":{}}", "../x", &in), SG_EBADINPUT);
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
    assert_int_equal(validate(&wreq_ack_cancel, "{\"action_id\":2147483647}", "dev-1", &in), SG_OK);
    json_decref(in);
    assert_int_equal(validate(&wreq_ack_cancel, "{\"action_id\":2147483648}", "dev-1", &in),
                     SG_EBADINPUT);
    assert_int_equal(validate(&wreq_ack_cancel, "{\"action_id\":0}", "dev-1", &in), SG_EBADINPUT);
    assert_int_equal(validate(&wreq_ack_cancel, "{\"action_id\":\"5\"}", "dev-1", &in),
                     SG_EBADINPUT);
    assert_int_equal(validate(&wreq_ddi_feedback,
                              "{\"action_id\":7,\"status\":\"failed\",\"detail\":\"x\"}", "dev-1",
                              &in),
                     SG_OK);
    json_decref(in);
    assert_int_equal(
        validate(&wreq_ddi_feedback, "{\"action_id\":7,\"status\":\"maybe\"}", "dev-1", &in),
        SG_EBADINPUT);
    assert_int_equal(
        validate(&wreq_ddi_feedback, "{\"action_id\":-1,\"status\":\"installed\"}", "dev-1", &in),
        SG_EBADINPUT);
    assert_int_equal(validate(&wreq_ddi_feedback,
                              "{\"action_id\":7,\"status\":\"installed\",\"more\":1}", "dev-1",
                              &in),
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
                 "{\"firmware_id\":\"" FW2 "\",\"hardware\":\"hw\",\"install\":[10]}");
    apply(s, "RolloutPaused", 11, json_pack("{s:s}", "rollout_id", "r1"));
    apply(s, "RolloutResumed", 12, json_pack("{s:s}", "rollout_id", "r1"));
    apply(s, "RolloutRolledBack", 13,
          json_pack("{s:s, s:i, s:i}", "rollout_id", "r1", "devices", 1, "blocked", 0));
    assert_state(s, "ddi_rollout", "r1",
                 "{\"firmware_id\":\"" FW2
                 "\",\"hardware\":\"hw\",\"install\":[10,12],\"rollback\":13}");
    /* an unknown rollout's switch changes nothing */
    apply(s, "RolloutResumed", 14, json_pack("{s:s}", "rollout_id", "nope"));
    assert_state(s, "ddi_rollout", "nope", NULL);

    /* images a device installed: distinct, failures not counted */
    const char *fws[] = {FW1, FW2, FW1};
    for (size_t i = 0; i < SG_ARRAY_LEN(fws); i++)
        apply(s, "DeviceReported", 20 + (json_int_t)i,
              json_pack("{s:s, s:s, s:s}", "device_id", "d1", "firmware_id", fws[i], "status",
                        "installed"));
    apply(s, "DeviceReported", 30,
          json_pack("{s:s, s:s, s:s}", "device_id", "d2", "firmware_id", FW1, "status", "failed"));
    assert_state(s, "ddi_installed", "d1", "[\"" FW1 "\",\"" FW2 "\"]");
    assert_state(s, "ddi_installed", "d2", NULL);
    wstate_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attributes_validate),
        cmocka_unit_test(test_cancel_and_feedback_validate),
        cmocka_unit_test(test_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
