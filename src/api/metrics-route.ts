// GET /metrics for Prometheus (workers/metrics.ts defines what it holds). Not behind the admin
// tokens: a scraper gets its own token (server.metrics.tokenEnv), and without one the endpoint
// answers callers on the loopback interface only — a Prometheus agent beside CareRelay, or a
// proxy in front — so metrics never need a token that can read the admin API.
import type { Request, RequestHandler } from 'express';
import { bearerMatches, refuseUnread } from './http.ts';

export interface MetricsSource {
  scrape(): Promise<{ contentType: string; text: string }>;
}

/** Whether the request came over the loopback interface (127.0.0.0/8, ::1, or IPv4 mapped into IPv6). */
export function fromLoopback(req: Request): boolean {
  const address = req.socket.remoteAddress ?? '';
  return address === '::1' || /^(?:::ffff:)?127\./.test(address);
}

export function metricsHandler(source: MetricsSource, token: string | undefined): RequestHandler {
  return async (req, res, next) => {
    if (token !== undefined ? !bearerMatches(req.headers.authorization, token) : !fromLoopback(req)) {
      if (token !== undefined) res.setHeader('WWW-Authenticate', 'Bearer');
      refuseUnread(res, token !== undefined ? 401 : 403, token !== undefined ? 'Unauthorized' : 'Forbidden', token !== undefined ? 'the metrics token is required (server.metrics.tokenEnv)' : 'metrics are served to loopback callers only until server.metrics.tokenEnv names a token');
      return;
    }
    try {
      const { contentType, text } = await source.scrape();
      res.setHeader('Cache-Control', 'no-store');
      res.type(contentType).send(text);
    } catch (error) {
      next(error);
    }
  };
}
