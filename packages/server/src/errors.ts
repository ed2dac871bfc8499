/**
 * The API's one error type: an HTTP status, a stable machine-readable `code`, a message for
 * humans and, for bad input, the field at fault. Rendered as `{"error":{code,message,details}}`.
 */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: Record<string, unknown>,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "ApiError";
  }

  toJSON() {
    return {
      error: { code: this.code, message: this.message, ...(this.details ? { details: this.details } : {}) },
    };
  }
}

export const badRequest = (field: string, message: string, code = "invalid_request") =>
  new ApiError(400, code, message, { field });
export const notFound = (what: string, id: string | number) =>
  new ApiError(404, "not_found", `${what} ${id} not found`);
