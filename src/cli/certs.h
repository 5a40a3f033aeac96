/* certs.h - the CLI's certificate commands (certs.c). */
#ifndef SG_CLI_CERTS_H
#define SG_CLI_CERTS_H

/* signet csr --config FILE --purpose devices */
int cli_csr(int argc, char **argv);
/* signet import-cert --config FILE --purpose devices CHAIN.pem */
int cli_import_cert(int argc, char **argv);

#endif
