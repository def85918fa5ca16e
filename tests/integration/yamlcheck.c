/* yamlcheck FILE...: parses every YAML document of each file with libyaml
 * and prints file:line:column: problem on the first error. Exit 0 when all
 * files parse, 1 otherwise, 2 on usage. For the deploy/ manifests, where no
 * YAML tool is guaranteed on the test machine. */
#include <stdio.h>
#include <yaml.h>

static int check(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    yaml_parser_t p;
    yaml_event_t ev;
    int rc = 0, docs = 0;
    if (!yaml_parser_initialize(&p)) {
        fclose(f);
        fprintf(stderr, "%s: out of memory\n", path);
        return 1;
    }
    yaml_parser_set_input_file(&p, f);
    for (;;) {
        if (!yaml_parser_parse(&p, &ev)) {
            fprintf(stderr, "%s:%zu:%zu: %s%s%s\n", path, p.problem_mark.line + 1,
                    p.problem_mark.column + 1, p.problem ? p.problem : "parse error",
                    p.context ? " " : "", p.context ? p.context : "");
            rc = 1;
            break;
        }
        yaml_event_type_t t = ev.type;
        if (t == YAML_DOCUMENT_START_EVENT)
            docs++;
        yaml_event_delete(&ev);
        if (t == YAML_STREAM_END_EVENT)
            break;
    }
    if (rc == 0 && docs == 0) {
        fprintf(stderr, "%s: no YAML document\n", path);
        rc = 1;
    }
    if (rc == 0)
        printf("%s: %d document(s) ok\n", path, docs);
    yaml_parser_delete(&p);
    fclose(f);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: yamlcheck FILE...\n");
        return 2;
    }
    int rc = 0;
    for (int i = 1; i < argc; i++)
        rc |= check(argv[i]);
    return rc;
}
