/* Greedy generation from an edgelin package in C, through ONNX Runtime GenAI's C API.
 *
 *   generate PACKAGE PROMPT MAX_NEW_TOKENS [--ids]
 *
 * Streams the text to stdout; with --ids, prints the generated token ids (one line) instead.
 * The package is used as `edgelin export` wrote it: genai_config.json, genai.onnx, tokenizer.json. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oga.h"

static void check(OgaResult *result) {
    if (result != NULL) {
        fprintf(stderr, "error: %s\n", OgaResultGetError(result));
        OgaDestroyResult(result);
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5 || (argc == 5 && strcmp(argv[4], "--ids") != 0)) {
        fprintf(stderr, "usage: %s PACKAGE PROMPT MAX_NEW_TOKENS [--ids]\n", argv[0]);
        return 2;
    }
    char *end;
    errno = 0;
    long max_new = strtol(argv[3], &end, 10);
    if (errno != 0 || *end != '\0' || max_new < 1 || max_new > 1000000) {
        fprintf(stderr, "error: MAX_NEW_TOKENS must be an integer in [1, 1000000], not %s\n", argv[3]);
        return 2;
    }
    int ids_only = argc == 5;

    OgaModel *model;
    check(OgaCreateModel(argv[1], &model));
    OgaTokenizer *tokenizer;
    check(OgaCreateTokenizer(model, &tokenizer));
    OgaSequences *prompt;
    check(OgaCreateSequences(&prompt));
    check(OgaTokenizerEncode(tokenizer, argv[2], prompt));
    size_t prompt_tokens = OgaSequencesGetSequenceCount(prompt, 0);

    OgaGeneratorParams *params;
    check(OgaCreateGeneratorParams(model, &params));
    check(OgaGeneratorParamsSetSearchNumber(params, "max_length", (double)(prompt_tokens + (size_t)max_new)));
    check(OgaGeneratorParamsSetSearchBool(params, "do_sample", false));
    OgaGenerator *generator;
    check(OgaCreateGenerator(model, params, &generator));
    check(OgaGenerator_AppendTokenSequences(generator, prompt));  /* the whole prompt in one run */

    OgaTokenizerStream *stream;
    check(OgaCreateTokenizerStream(tokenizer, &stream));
    while (!OgaGenerator_IsDone(generator)) {
        check(OgaGenerator_GenerateNextToken(generator));
        const int32_t *next;
        size_t count;
        check(OgaGenerator_GetNextTokens(generator, &next, &count));
        if (ids_only) {
            printf("%d ", next[0]);
        } else {
            const char *piece;
            check(OgaTokenizerStreamDecode(stream, next[0], &piece));
            fputs(piece, stdout);
        }
        fflush(stdout);
    }
    putchar('\n');

    OgaDestroyTokenizerStream(stream);
    OgaDestroyGenerator(generator);
    OgaDestroyGeneratorParams(params);
    OgaDestroySequences(prompt);
    OgaDestroyTokenizer(tokenizer);
    OgaDestroyModel(model);
    OgaShutdown();
    return 0;
}
