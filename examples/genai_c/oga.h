/* The part of ONNX Runtime GenAI's C API (ort_genai_c.h, MIT) that generate.c calls.
 *
 * The onnxruntime-genai wheel ships libonnxruntime-genai.so but not its header; these are the
 * library's exported declarations, so the example builds against the wheel alone. With a source
 * or NuGet build of ONNX Runtime GenAI, include its ort_genai_c.h instead. */
#ifndef EDGELIN_OGA_H
#define EDGELIN_OGA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct OgaResult OgaResult;
typedef struct OgaModel OgaModel;
typedef struct OgaTokenizer OgaTokenizer;
typedef struct OgaTokenizerStream OgaTokenizerStream;
typedef struct OgaSequences OgaSequences;
typedef struct OgaGeneratorParams OgaGeneratorParams;
typedef struct OgaGenerator OgaGenerator;

const char *OgaResultGetError(const OgaResult *result);
void OgaDestroyResult(OgaResult *result);

OgaResult *OgaCreateModel(const char *config_path, OgaModel **out);
void OgaDestroyModel(OgaModel *model);

OgaResult *OgaCreateTokenizer(const OgaModel *model, OgaTokenizer **out);
void OgaDestroyTokenizer(OgaTokenizer *tokenizer);
OgaResult *OgaTokenizerEncode(const OgaTokenizer *tokenizer, const char *str, OgaSequences *sequences);
OgaResult *OgaCreateTokenizerStream(const OgaTokenizer *tokenizer, OgaTokenizerStream **out);
void OgaDestroyTokenizerStream(OgaTokenizerStream *stream);
OgaResult *OgaTokenizerStreamDecode(OgaTokenizerStream *stream, int32_t token, const char **out);

OgaResult *OgaCreateSequences(OgaSequences **out);
void OgaDestroySequences(OgaSequences *sequences);
size_t OgaSequencesGetSequenceCount(const OgaSequences *sequences, size_t sequence_index);

OgaResult *OgaCreateGeneratorParams(const OgaModel *model, OgaGeneratorParams **out);
void OgaDestroyGeneratorParams(OgaGeneratorParams *params);
OgaResult *OgaGeneratorParamsSetSearchNumber(OgaGeneratorParams *params, const char *name, double value);
OgaResult *OgaGeneratorParamsSetSearchBool(OgaGeneratorParams *params, const char *name, bool value);

OgaResult *OgaCreateGenerator(const OgaModel *model, const OgaGeneratorParams *params, OgaGenerator **out);
void OgaDestroyGenerator(OgaGenerator *generator);
OgaResult *OgaGenerator_AppendTokenSequences(OgaGenerator *generator, const OgaSequences *sequences);
bool OgaGenerator_IsDone(const OgaGenerator *generator);
OgaResult *OgaGenerator_GenerateNextToken(OgaGenerator *generator);
OgaResult *OgaGenerator_GetNextTokens(const OgaGenerator *generator, const int32_t **out, size_t *out_count);

void OgaShutdown(void);

#endif
